//! The one place that names bincode (flagged unmaintained upstream): swap the
//! encoding here and nothing else changes.
//!
//! bincode 2's standard configuration (varint integers, little endian) with a
//! size limit, so garbage bytes that claim a huge length fail to decode
//! instead of allocating it.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Largest value decoded (bytes): far above any record (a full history is
/// tens of kilobytes) and far below what would hurt memory.
const LIMIT: usize = 16 * 1024 * 1024;

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<LIMIT>()
}

/// Encoding or decoding failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(String);

/// Encodes a value.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| CodecError(e.to_string()))
}

/// Decodes a value; trailing bytes are an error, so a truncated or padded
/// record is never taken for a valid one.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| CodecError(e.to_string()))?;
    if read != bytes.len() {
        return Err(CodecError(format!(
            "{} trailing bytes after the value",
            bytes.len() - read
        )));
    }
    Ok(value)
}
