# wasmcdc and its example transforms.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN rustup target add wasm32-wasip2 \
    && cargo build --release -p wasmcdc \
    && cd transforms && cargo build --target wasm32-wasip2 --release

FROM debian:bookworm-slim
COPY --from=build /src/target/release/wasmcdc /usr/local/bin/wasmcdc
COPY --from=build /src/transforms/target/wasm32-wasip2/release/*.wasm /opt/wasmcdc/transforms/
ENTRYPOINT ["wasmcdc"]
CMD ["run"]
