# The control-plane image (operator and API). Workers run on EC2 hosts
# (deploy/ec2), where they can sandbox functions.
FROM rust:1-bookworm AS build
# build.rs bundles the web console (console/) with Node.js and npm.
RUN apt-get update && apt-get install -y --no-install-recommends nodejs npm && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin infra

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/infra /usr/local/bin/infra
USER 65532
ENTRYPOINT ["/usr/local/bin/infra"]
