# Builds floodgate.wasm with rustup's wasm32-wasip1 target and hands it to Envoy's image.
FROM rust:1.95-bookworm AS build
RUN rustup target add wasm32-wasip1
WORKDIR /src
COPY . .
RUN cargo build --release --target wasm32-wasip1 -p floodgate

FROM envoyproxy/envoy:v1.40-latest
COPY --from=build /src/target/wasm32-wasip1/release/floodgate.wasm /etc/floodgate/floodgate.wasm
