# floodgate-control: built in the Rust image, run in a slim Debian.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p floodgate-control

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/floodgate-control /usr/local/bin/floodgate-control
USER 65534
EXPOSE 8080
ENTRYPOINT ["floodgate-control"]
CMD ["serve"]
