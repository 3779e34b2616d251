//! The Switchbord API as Rust types: messages and gRPC stubs generated from `proto/` at build
//! time. `proto/` is the contract; this crate only makes it usable from Rust.

/// `switchbord.v1`: contacts, journeys, integrations and webhooks.
pub mod v1 {
    #![allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]
    tonic::include_proto!("switchbord.v1");
}

/// Encoded `FileDescriptorSet` of every file in `proto/`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("switchbord_descriptor");

pub mod json;

pub mod auth;
pub mod violations;
