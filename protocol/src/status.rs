//! Status codes carried in replies, and the decoding errors they come from.

/// Result of a request (header bytes 20-21 of a reply; 0 in requests).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// GET on a key that holds no page (never stored, flushed, or an ephemeral page evicted).
    NotFound = 1,
    /// The frame or payload does not follow this specification.
    Malformed = 2,
    /// No common protocol version.
    UnsupportedVersion = 3,
    /// Opcode unknown to this appliance.
    UnknownOpcode = 4,
    /// The pool id does not exist (or belongs to another client).
    UnknownPool = 5,
    /// The appliance is out of memory; persistent puts are refused, never silently dropped.
    NoSpace = 6,
    /// The page's CRC-32C does not match its contents.
    BadChecksum = 7,
    /// A compressed page does not decompress to exactly one page.
    CorruptPayload = 8,
    /// The frame is larger than [`crate::MAX_PAYLOAD`] or a batch longer than [`crate::MAX_BATCH`].
    TooLarge = 9,
    /// A request other than HELLO before a successful HELLO, or bad credentials.
    NotAuthenticated = 10,
    /// This client's quota is used up.
    QuotaExceeded = 11,
    /// The appliance failed for a reason of its own; the request had no effect.
    Internal = 12,
}

impl Status {
    /// Decodes a status; unknown codes map to `None` (callers treat them as failures).
    pub fn from_u16(v: u16) -> Option<Status> {
        Some(match v {
            0 => Status::Ok,
            1 => Status::NotFound,
            2 => Status::Malformed,
            3 => Status::UnsupportedVersion,
            4 => Status::UnknownOpcode,
            5 => Status::UnknownPool,
            6 => Status::NoSpace,
            7 => Status::BadChecksum,
            8 => Status::CorruptPayload,
            9 => Status::TooLarge,
            10 => Status::NotAuthenticated,
            11 => Status::QuotaExceeded,
            12 => Status::Internal,
            _ => return None,
        })
    }

    /// Short stable name, used in logs and error messages.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::NotFound => "not found",
            Status::Malformed => "malformed request",
            Status::UnsupportedVersion => "unsupported protocol version",
            Status::UnknownOpcode => "unknown opcode",
            Status::UnknownPool => "unknown pool",
            Status::NoSpace => "appliance out of memory",
            Status::BadChecksum => "page checksum mismatch",
            Status::CorruptPayload => "corrupt compressed page",
            Status::TooLarge => "frame too large",
            Status::NotAuthenticated => "not authenticated",
            Status::QuotaExceeded => "client quota exceeded",
            Status::Internal => "internal appliance error",
        }
    }
}

impl core::fmt::Display for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why bytes could not be decoded or encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The input ended inside a field.
    Truncated,
    /// The frame does not start with [`crate::MAGIC`]: the stream is out of sync; close it.
    BadMagic,
    /// The header's version byte is not one this source speaks; close the connection.
    BadVersion(u8),
    /// A declared length exceeds the protocol maximum.
    TooLarge,
    /// An opcode this version does not know.
    UnknownOpcode(u8),
    /// A field has a value outside its domain.
    Malformed(&'static str),
    /// The output buffer given to an encoder is too small.
    BufferTooSmall,
}

impl WireError {
    /// The status a server replies with when a request fails to decode this way.
    pub fn status(self) -> Status {
        match self {
            WireError::Truncated | WireError::BadMagic | WireError::Malformed(_) => {
                Status::Malformed
            }
            WireError::BadVersion(_) => Status::UnsupportedVersion,
            WireError::TooLarge => Status::TooLarge,
            WireError::UnknownOpcode(_) => Status::UnknownOpcode,
            WireError::BufferTooSmall => Status::Internal,
        }
    }
}

impl core::fmt::Display for WireError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            WireError::Truncated => f.write_str("truncated frame"),
            WireError::BadMagic => f.write_str("bad magic (stream out of sync)"),
            WireError::BadVersion(v) => write!(f, "unsupported frame version {v}"),
            WireError::TooLarge => f.write_str("frame exceeds protocol maximum"),
            WireError::UnknownOpcode(op) => write!(f, "unknown opcode {op}"),
            WireError::Malformed(what) => write!(f, "malformed: {what}"),
            WireError::BufferTooSmall => f.write_str("output buffer too small"),
        }
    }
}

impl core::error::Error for WireError {}
