//! `tmem.conf`, the settings file an operator edits on the appliance image's FAT partition.
//!
//! The boot loader reads it (GRUB hands it over as a multiboot module), checks all of it before
//! anything starts, and turns it into the Hermit command line: kernel network arguments, then the
//! appliance's flags. A file with any error starts nothing: the operator sees the line and what is
//! wrong. `no_std` and allocation-free, because the loader has neither; the host tests it.
//!
//! Format: one `name = value` per line, `#` starts a comment, names may appear once except `key`.
//! See [`SAMPLE`] (the file the image ships with) for every setting.

#![no_std]

use core::fmt::{self, Write};

/// The file the image ships with: every setting, explained, with safe defaults.
pub const SAMPLE: &str = include_str!("../tmem.conf");

/// Most `key` lines (each makes an 80-byte argument on the kernel command line).
pub const MAX_KEYS: usize = 64;

/// A problem in the file, with its 1-based line (0: the file as a whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Error {
    pub line: usize,
    pub message: &'static str,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => write!(f, "tmem.conf: {}", self.message),
            n => write!(f, "tmem.conf line {n}: {}", self.message),
        }
    }
}

/// How much memory the store gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memory<'a> {
    /// All the machine's RAM but what the kernel and connections need (the appliance decides).
    Auto,
    /// A size in the appliance's `--memory` syntax, e.g. `4GiB`.
    Size(&'a str),
}

/// How the appliance gets its address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    Dhcp,
    Static {
        address: [u8; 4],
        prefix: u8,
        gateway: Option<[u8; 4]>,
    },
}

/// A whole, checked configuration (borrowing the file's text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config<'a> {
    text: &'a str,
    pub memory: Memory<'a>,
    pub port: u16,
    pub network: Network,
    /// Serve clients without keys, in clear.
    pub insecure: bool,
    /// Number of `key` lines.
    pub keys: usize,
}

/// One `name = value` line.
struct Line<'a> {
    number: usize,
    name: &'a str,
    value: &'a str,
}

/// The non-blank, non-comment lines of `text`, split at the first `=`.
fn lines(text: &str) -> impl Iterator<Item = Result<Line<'_>, Error>> {
    text.lines().enumerate().filter_map(|(i, raw)| {
        let number = i + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            return None;
        }
        Some(match content.split_once('=') {
            Some((name, value)) => Ok(Line {
                number,
                name: name.trim(),
                value: value.trim(),
            }),
            None => Err(Error {
                line: number,
                message: "expected `name = value`",
            }),
        })
    })
}

/// Parses and checks `text` as a whole.
pub fn parse(text: &str) -> Result<Config<'_>, Error> {
    let mut config = Config {
        text,
        memory: Memory::Auto,
        port: 7777,
        network: Network::Dhcp,
        insecure: false,
        keys: 0,
    };
    let mut seen = [false; 5];
    let mut gateway = None;
    let mut gateway_line = 0;
    for line in lines(text) {
        let Line {
            number,
            name,
            value,
        } = line?;
        let err = |message| Error {
            line: number,
            message,
        };
        let once = |seen: &mut [bool; 5], i: usize| {
            if core::mem::replace(&mut seen[i], true) {
                Err(err("this setting is given twice"))
            } else {
                Ok(())
            }
        };
        match name {
            "memory" => {
                once(&mut seen, 0)?;
                config.memory = parse_memory(value)
                    .ok_or(err("memory: `auto` or a size such as 512MiB, 4GiB, 1.5G"))?;
            }
            "port" => {
                once(&mut seen, 1)?;
                config.port = value
                    .parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or(err("port: a number from 1 to 65535"))?;
            }
            "address" => {
                once(&mut seen, 2)?;
                config.network = parse_network(value).ok_or(err(
                    "address: `dhcp` or an IPv4 address with its prefix length, e.g. 192.168.1.50/24",
                ))?;
            }
            "gateway" => {
                once(&mut seen, 3)?;
                gateway = Some(parse_ipv4(value).ok_or(err("gateway: an IPv4 address"))?);
                gateway_line = number;
            }
            "insecure" => {
                once(&mut seen, 4)?;
                config.insecure = match value {
                    "yes" | "true" => true,
                    "no" | "false" => false,
                    _ => return Err(err("insecure: `yes` or `no`")),
                };
            }
            "key" => {
                parse_key(value).ok_or(err(
                    "key: a client id (decimal or 0x hex) and 64 hex digits, as `tmemctl keygen` prints",
                ))?;
                config.keys += 1;
                if config.keys > MAX_KEYS {
                    return Err(err("more than 64 keys"));
                }
            }
            _ => {
                return Err(err(
                    "unknown setting (known: memory, port, address, gateway, key, insecure)",
                ))
            }
        }
    }
    if let Some(gw) = gateway {
        match &mut config.network {
            Network::Static { gateway, .. } => *gateway = Some(gw),
            Network::Dhcp => {
                return Err(Error {
                    line: gateway_line,
                    message: "gateway: only with a static `address` (DHCP gives the gateway)",
                })
            }
        }
    }
    if config.keys == 0 && !config.insecure {
        return Err(Error {
            line: 0,
            message: "no `key` lines: add client keys (`tmemctl keygen` prints them), \
                      or `insecure = yes` to serve anyone in clear",
        });
    }
    Ok(config)
}

fn parse_memory(value: &str) -> Option<Memory<'_>> {
    if value == "auto" {
        return Some(Memory::Auto);
    }
    let digits = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(digits);
    let number_ok = !number.is_empty()
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let unit_ok = UNITS.iter().any(|u| unit.trim().eq_ignore_ascii_case(u));
    (number_ok && unit_ok).then_some(Memory::Size(value))
}

/// Units the appliance's `--memory` accepts (any case).
const UNITS: [&str; 14] = [
    "", "b", "k", "kb", "kib", "m", "mb", "mib", "g", "gb", "gib", "t", "tb", "tib",
];

fn parse_ipv4(value: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = value.split('.');
    for octet in &mut out {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
}

fn parse_network(value: &str) -> Option<Network> {
    if value == "dhcp" {
        return Some(Network::Dhcp);
    }
    let (address, prefix) = value.split_once('/')?;
    let address = parse_ipv4(address)?;
    let prefix = prefix.parse::<u8>().ok().filter(|p| (1..=30).contains(p))?;
    Some(Network::Static {
        address,
        prefix,
        gateway: None,
    })
}

/// `ID HEX` (or `ID:HEX`): the id's text and the key's hex, checked.
fn parse_key(value: &str) -> Option<(&str, &str)> {
    let (id, key) = value
        .split_once(|c: char| c == ':' || c.is_whitespace())
        .map(|(a, b)| (a.trim(), b.trim()))?;
    let id_ok = match id.strip_prefix("0x").or_else(|| id.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).is_ok(),
        None => id.parse::<u64>().is_ok(),
    };
    let key_ok = key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit());
    (id_ok && key_ok).then_some((id, key))
}

impl<'a> Config<'a> {
    /// The `key` lines as (client id, key hex).
    pub fn keys(&self) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        lines(self.text)
            .filter_map(Result::ok)
            .filter(|l| l.name == "key")
            .filter_map(|l| parse_key(l.value))
    }

    /// The Hermit command line: the kernel's network arguments, then `--` and the appliance's
    /// flags. `--halt-on-error` keeps a start-up error on the screen instead of powering off.
    pub fn write_command_line(&self, out: &mut impl Write) -> fmt::Result {
        if let Network::Static {
            address,
            prefix,
            gateway,
        } = self.network
        {
            let mask = u32::MAX << (32 - u32::from(prefix));
            write!(out, "-ip {} -mask {}", Ip(address), Ip(mask.to_be_bytes()))?;
            if let Some(gw) = gateway {
                write!(out, " -gateway {}", Ip(gw))?;
            }
            out.write_char(' ')?;
        }
        write!(out, "-- --listen 0.0.0.0:{} --memory ", self.port)?;
        match self.memory {
            Memory::Auto => out.write_str("auto")?,
            Memory::Size(size) => out.write_str(size)?,
        }
        out.write_str(" --halt-on-error")?;
        if self.insecure {
            out.write_str(" --insecure")?;
        }
        for (id, key) in self.keys() {
            write!(out, " --key {id}:{key}")?;
        }
        Ok(())
    }

    /// What the command line holds, for logs: everything but the keys' bytes.
    pub fn summary(&self, out: &mut impl Write) -> fmt::Result {
        write!(out, "port {}, memory ", self.port)?;
        match self.memory {
            Memory::Auto => out.write_str("auto")?,
            Memory::Size(size) => out.write_str(size)?,
        }
        match self.network {
            Network::Dhcp => out.write_str(", address by DHCP")?,
            Network::Static {
                address,
                prefix,
                gateway,
            } => {
                write!(out, ", address {}/{prefix}", Ip(address))?;
                if let Some(gw) = gateway {
                    write!(out, " via {}", Ip(gw))?;
                }
            }
        }
        write!(out, ", {} client key(s)", self.keys)?;
        if self.insecure {
            out.write_str(", INSECURE: clients without keys served in clear")?;
        }
        Ok(())
    }
}

/// Dotted-quad display.
struct Ip([u8; 4]);

impl fmt::Display for Ip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{a}.{b}.{c}.{d}")
    }
}

/// A command line for logs: every `--key ID:HEX` shows the id only.
pub struct Redacted<'a>(pub &'a str);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut after_key = false;
        for (i, word) in self.0.split_whitespace().enumerate() {
            if i > 0 {
                f.write_char(' ')?;
            }
            let (prefix, value) = match word.strip_prefix("--key=") {
                Some(v) => ("--key=", Some(v)),
                None if after_key => ("", Some(word)),
                None => (word, None),
            };
            f.write_str(prefix)?;
            match value.map(|v| v.split_once(':')) {
                Some(Some((id, _))) => write!(f, "{id}:<hidden>")?,
                // Not `ID:HEX`: the whole word may be key material.
                Some(None) => f.write_str("<hidden>")?,
                None => {}
            }
            after_key = word == "--key";
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
