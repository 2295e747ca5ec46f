# The demo WebSocket echo backend (exports collab_backpressure_level at /metrics).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p floodgate-demo --bin ws-backend

FROM debian:bookworm-slim
COPY --from=build /src/target/release/ws-backend /usr/local/bin/ws-backend
USER 65534
ENV BIND=0.0.0.0 PORT=8081
EXPOSE 8081
ENTRYPOINT ["ws-backend"]
