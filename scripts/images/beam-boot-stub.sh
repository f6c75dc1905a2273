#!/bin/sh
# Stand-in for Apache Beam's SDK worker boot (/opt/apache/beam/boot in apache/beam_python3.11_sdk), used by
# scripts/images.sh only when that image cannot be pulled. The real boot is a Go binary that Dataflow starts
# with --id/--logging_endpoint/... to run the SDK harness; this stub only execs its arguments, so the batch
# image built on it runs commands but has never booted a Dataflow worker.
exec "$@"
