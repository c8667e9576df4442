//! Conversions between protobuf and the core's types that several services share.

use mnvault_core::id::TokenFormat;
use mnvault_proto::v1 as pb;

use crate::error::VaultError;

/// A protobuf timestamp of Unix milliseconds.
pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

/// Unix milliseconds of a protobuf timestamp.
pub fn from_timestamp(at: &prost_types::Timestamp) -> i64 {
    at.seconds.saturating_mul(1000).saturating_add(i64::from(at.nanos) / 1_000_000)
}

/// The token format a request asks for (unspecified means opaque).
pub fn token_format(format: i32) -> Result<TokenFormat, VaultError> {
    match pb::TokenFormat::try_from(format) {
        Ok(pb::TokenFormat::Unspecified | pb::TokenFormat::Opaque) => Ok(TokenFormat::Opaque),
        Ok(pb::TokenFormat::LegacyDigits) => Ok(TokenFormat::LegacyDigits),
        Err(_) => Err(VaultError::InvalidArgument("the token format is not one the vault knows".into())),
    }
}

/// The wire form of a token format.
pub fn wire_format(format: TokenFormat) -> pb::TokenFormat {
    match format {
        TokenFormat::Opaque => pb::TokenFormat::Opaque,
        TokenFormat::LegacyDigits => pb::TokenFormat::LegacyDigits,
    }
}

/// A field that is empty when not given, parsed when given.
pub fn optional<T, E>(text: &str, parse: impl FnOnce(&str) -> Result<T, E>) -> Result<Option<T>, E> {
    if text.is_empty() {
        Ok(None)
    } else {
        parse(text).map(Some)
    }
}
