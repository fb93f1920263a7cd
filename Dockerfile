# syntax=docker/dockerfile:1

# Build stage. cgo stays on because pg_query_go (the SQL parser) is C, which
# also means the runtime image must have glibc.
FROM golang:1.26-bookworm AS build
WORKDIR /src
ENV CGO_ENABLED=1
# Dependencies first, so source edits do not re-download modules.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod \
    go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    go build -trimpath -ldflags="-s -w" -o /pgtenant .

# Runtime: glibc, CA certificates and tzdata, no shell, non-root user.
FROM gcr.io/distroless/base-debian12:nonroot
COPY --from=build /pgtenant /pgtenant
USER nonroot:nonroot
VOLUME /etc/pgtenant
EXPOSE 6432
ENTRYPOINT ["/pgtenant"]
CMD ["--config", "/etc/pgtenant/pgtenant.yaml"]
