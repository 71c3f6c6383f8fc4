//! The gRPC messages and services generated from `proto/spaceraft/v1/*.proto`.
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("spaceraft.v1");
