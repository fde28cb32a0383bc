//! `remote_target`: `HOST:PORT[,HOST:PORT...]`, IPv4 dotted quads, at most [`MAX_TARGETS`].

/// Most appliances in `remote_target`.
pub const MAX_TARGETS: usize = 8;

/// An IPv4 address and port.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SocketAddr {
    /// Host byte order.
    pub ip: u32,
    /// Port.
    pub port: u16,
}

/// A parsed target list.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Targets {
    addrs: [SocketAddr; MAX_TARGETS],
    len: usize,
}

impl Targets {
    /// The appliances, in the order given.
    pub fn as_slice(&self) -> &[SocketAddr] {
        &self.addrs[..self.len]
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Why a target list was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetError {
    /// Nothing given.
    Empty,
    /// More than [`MAX_TARGETS`].
    TooMany,
    /// An entry that is not `A.B.C.D:PORT`.
    Syntax,
    /// The same appliance twice.
    Duplicate,
}

/// Parses `HOST:PORT[,HOST:PORT...]` (blanks around entries ignored, empty entries skipped).
pub fn parse_targets(s: &[u8]) -> Result<Targets, TargetError> {
    let mut t = Targets::default();
    for item in s.split(|&c| c == b',') {
        let item = trim_ascii(item);
        if item.is_empty() {
            continue;
        }
        let addr = parse_addr(item).ok_or(TargetError::Syntax)?;
        if t.as_slice().contains(&addr) {
            return Err(TargetError::Duplicate);
        }
        if t.len == MAX_TARGETS {
            return Err(TargetError::TooMany);
        }
        t.addrs[t.len] = addr;
        t.len += 1;
    }
    if t.len == 0 {
        return Err(TargetError::Empty);
    }
    Ok(t)
}

/// `s` without leading and trailing ASCII whitespace (`<[u8]>::trim_ascii` needs Rust 1.80, newer
/// than the kernel's minimum).
fn trim_ascii(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    s.get(start..end).unwrap_or(&[])
}

fn parse_addr(s: &[u8]) -> Option<SocketAddr> {
    let colon = s.iter().rposition(|&c| c == b':')?;
    let (host, port) = (s.get(..colon)?, s.get(colon + 1..)?);
    let port = parse_u32(port)?;
    let mut ip = 0u32;
    let mut parts = 0;
    for part in host.split(|&c| c == b'.') {
        let v = parse_u32(part)?;
        if v > 255 {
            return None;
        }
        ip = (ip << 8) | v;
        parts += 1;
    }
    if parts != 4 || port == 0 || port > 65535 {
        return None;
    }
    Some(SocketAddr {
        ip,
        port: port as u16,
    })
}

fn parse_u32(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 9 {
        return None;
    }
    s.iter().try_fold(0u32, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
    })
}
