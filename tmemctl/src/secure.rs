//! The client end of a connection: HELLO (with the client's key: a Noise_NNpsk0 handshake, see
//! docs/security.md), then a byte stream that carries frames, sealed as records when the session
//! is authenticated. Used by [`crate::client::Client`], the conformance suite and the tests.
//!
//! The handshake runs `snow` as initiator. The two directions are split ([`Reader`], [`Writer`])
//! over snow's stateless transport, each with its own counter, so a reader thread and a writer
//! thread need no lock between them.

use anyhow::{anyhow, bail, ensure, Context, Result};
use protocol::noise::{
    self, Cipher, MAX_RECORD_PLAINTEXT, MSG1_LEN, MSG1_PAYLOAD_LEN, MSG2_PAYLOAD_LEN,
    RECORD_HEADER_LEN, TAG_LEN,
};
use protocol::{Header, Hello, Reply, Request, Status, HEADER_LEN, MAX_FRAME};
use std::io::{self, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

/// Bytes of a client key.
pub const KEY_LEN: usize = noise::KEY_LEN;

/// Who a client is: its id and, for an appliance with keys, its pre-shared key.
#[derive(Clone)]
pub struct Identity {
    /// The client id pools belong to.
    pub client_id: u64,
    /// The client's key; `None` only for an appliance run `--insecure` (or on loopback without
    /// keys).
    pub key: Option<[u8; KEY_LEN]>,
    /// The AEAD of keyed sessions ([`preferred_cipher`] unless chosen).
    pub cipher: Cipher,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Identity")
            .field("client_id", &format_args!("{:#x}", self.client_id))
            .field("key", &self.key.map(|_| "<hidden>"))
            .field("cipher", &self.cipher)
            .finish()
    }
}

impl Identity {
    /// An identity without a key (insecure appliances only).
    pub fn insecure(client_id: u64) -> Identity {
        Identity {
            client_id,
            key: None,
            cipher: preferred_cipher(),
        }
    }

    /// An identity with a key.
    pub fn with_key(client_id: u64, key: [u8; KEY_LEN]) -> Identity {
        Identity {
            client_id,
            key: Some(key),
            cipher: preferred_cipher(),
        }
    }
}

/// AES-256-GCM where this CPU has AES and carry-less multiply instructions (then several times
/// cheaper than ChaCha20-Poly1305, docs/benchmarks.md), ChaCha20-Poly1305 elsewhere.
pub fn preferred_cipher() -> Cipher {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("aes")
        && std::arch::is_x86_feature_detected!("pclmulqdq")
    {
        return Cipher::AesGcm;
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("aes") {
        return Cipher::AesGcm;
    }
    Cipher::ChaChaPoly
}

/// What the appliance said in its HELLO reply.
#[derive(Clone, Copy, Debug)]
pub struct Greeting {
    /// Most entries per BATCH it accepts.
    pub max_batch: u16,
    /// Largest payload it accepts.
    pub max_payload: u32,
    /// Whether the session is authenticated and encrypted.
    pub secure: bool,
    /// The reply's nonce (fresh random bytes; no method uses them).
    pub nonce: [u8; protocol::HELLO_NONCE_LEN],
}

/// Socket read buffer of a sealed reader: two of the largest records.
const SEALED_READ_BUFFER: usize = 2 * (RECORD_HEADER_LEN + protocol::noise::MAX_RECORD_CIPHERTEXT);

/// The two directions of the record layer share the transport keys (each has its own counter).
type Keys = Arc<snow::StatelessTransportState>;

/// The receiving half of a connection: frame bytes, opened from records when secure.
pub enum Reader {
    /// No authentication: the socket itself.
    Plain(TcpStream),
    /// Authenticated: records opened one at a time.
    Sealed {
        /// The socket, buffered: a record's header and body are then one read, not three.
        stream: BufReader<TcpStream>,
        /// Transport keys.
        keys: Keys,
        /// Next receive nonce.
        nonce: u64,
        /// The last record's plaintext and how much of it was read.
        plain: Vec<u8>,
        /// Read position in `plain`.
        pos: usize,
        /// Ciphertext buffer.
        record: Vec<u8>,
    },
}

/// The sending half: frame bytes in, sealed as records when secure.
pub enum Writer {
    /// No authentication: the socket itself.
    Plain(TcpStream),
    /// Authenticated: each write becomes one or more records.
    Sealed {
        /// The socket.
        stream: TcpStream,
        /// Transport keys.
        keys: Keys,
        /// Next send nonce.
        nonce: u64,
        /// Sealed bytes of the current write.
        wire: Vec<u8>,
    },
}

impl Reader {
    /// The socket (for timeouts).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Reader::Plain(s) => s,
            Reader::Sealed { stream, .. } => stream.get_ref(),
        }
    }
}

impl Writer {
    /// The socket (for timeouts and shutdown).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Writer::Plain(s) | Writer::Sealed { stream: s, .. } => s,
        }
    }
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Reader::Plain(s) => s.read(buf),
            Reader::Sealed {
                stream,
                keys,
                nonce,
                plain,
                pos,
                record,
            } => {
                while *pos == plain.len() {
                    let mut header = [0u8; RECORD_HEADER_LEN];
                    match stream.read(&mut header[..1])? {
                        0 => return Ok(0),
                        _ => stream.read_exact(&mut header[1..])?,
                    }
                    let len = noise::record_len(header)
                        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "record length"))?;
                    record.resize(len, 0);
                    stream.read_exact(record)?;
                    plain.resize(len - TAG_LEN, 0);
                    let n = keys.read_message(*nonce, record, plain).map_err(|_| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            "record failed authentication (altered, replayed or reordered)",
                        )
                    })?;
                    *nonce += 1;
                    plain.truncate(n);
                    *pos = 0;
                }
                let n = buf.len().min(plain.len() - *pos);
                buf[..n].copy_from_slice(&plain[*pos..*pos + n]);
                *pos += n;
                Ok(n)
            }
        }
    }
}

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Writer::Plain(s) => s.write(buf),
            Writer::Sealed {
                stream,
                keys,
                nonce,
                wire,
            } => {
                wire.clear();
                for chunk in buf.chunks(MAX_RECORD_PLAINTEXT) {
                    let at = wire.len();
                    let len = chunk.len() + TAG_LEN;
                    wire.resize(at + RECORD_HEADER_LEN + len, 0);
                    wire[at..at + 2].copy_from_slice(&(len as u16).to_le_bytes());
                    keys.write_message(*nonce, chunk, &mut wire[at + 2..])
                        .map_err(|_| io::Error::other("cannot seal record"))?;
                    *nonce += 1;
                }
                stream.write_all(wire)?;
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Says HELLO on `stream` as `id` and returns the two halves of the session.
pub fn hello(stream: TcpStream, id: &Identity) -> Result<(Reader, Writer, Greeting)> {
    let mut stream = stream;
    let Some(psk) = id.key else {
        let req = Request::Hello(Hello::new(id.client_id));
        let reply = exchange_hello(&mut stream, &req, |r| match r {
            Reply::Hello(h) if h.auth.is_empty() => Ok((h.max_batch, h.max_payload, h.nonce)),
            Reply::Hello(_) => bail!("unexpected authentication in HELLO reply"),
            other => bail!("HELLO refused: {}", refusal(other)),
        })?;
        let greeting = Greeting {
            max_batch: reply.0,
            max_payload: reply.1,
            secure: false,
            nonce: reply.2,
        };
        return Ok((
            Reader::Plain(stream.try_clone()?),
            Writer::Plain(stream),
            greeting,
        ));
    };
    let mut msg1 = [0u8; MSG1_LEN];
    let fields = Hello {
        auth_method: id.cipher.auth_method(),
        auth: &msg1,
        ..Hello::new(id.client_id)
    };
    let prologue = noise::prologue(&fields);
    let mut hs = snow::Builder::new(noise_params(id.cipher))
        .psk(0, &psk)?
        .prologue(&prologue)?
        .build_initiator()?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("clock before 1970")?
        .as_nanos() as u64;
    let n = hs.write_message(&now.to_le_bytes(), &mut msg1)?;
    ensure!(n == MSG1_LEN, "message 1 length");
    let req = Request::Hello(Hello {
        auth_method: id.cipher.auth_method(),
        auth: &msg1,
        ..Hello::new(id.client_id)
    });
    let (limits, greeting) = exchange_hello(&mut stream, &req, |r| match r {
        Reply::Hello(h) => {
            let mut limits = [0u8; MSG2_PAYLOAD_LEN];
            let n = hs.read_message(h.auth, &mut limits).map_err(|_| {
                anyhow!("the appliance does not hold this client's key (message 2 failed)")
            })?;
            ensure!(n == MSG2_PAYLOAD_LEN, "message 2 payload length");
            Ok((limits, (h.version, h.max_batch, h.max_payload, h.nonce)))
        }
        other => bail!("HELLO refused: {}", refusal(other)),
    })?;
    // The limits in clear must be the ones sealed in message 2.
    let mut sealed = [0u8; MSG2_PAYLOAD_LEN];
    sealed[0..2].copy_from_slice(&greeting.0.to_le_bytes());
    sealed[2..4].copy_from_slice(&greeting.1.to_le_bytes());
    sealed[4..8].copy_from_slice(&greeting.2.to_le_bytes());
    ensure!(
        sealed == limits,
        "HELLO reply fields differ from the authenticated ones"
    );
    let keys: Keys = Arc::new(hs.into_stateless_transport_mode()?);
    let reader = Reader::Sealed {
        stream: BufReader::with_capacity(SEALED_READ_BUFFER, stream.try_clone()?),
        keys: keys.clone(),
        nonce: 0,
        plain: Vec::new(),
        pos: 0,
        record: Vec::new(),
    };
    let writer = Writer::Sealed {
        stream,
        keys,
        nonce: 0,
        wire: Vec::new(),
    };
    Ok((
        reader,
        writer,
        Greeting {
            max_batch: greeting.1,
            max_payload: greeting.2,
            secure: true,
            nonce: greeting.3,
        },
    ))
}

fn noise_params(cipher: Cipher) -> snow::params::NoiseParams {
    cipher
        .protocol_name()
        .parse()
        .expect("a Noise pattern snow knows")
}

/// Sends the HELLO frame and decodes its reply (both in clear) with `f`.
fn exchange_hello<T>(
    stream: &mut TcpStream,
    req: &Request<'_>,
    f: impl FnOnce(Reply<'_>) -> Result<T>,
) -> Result<T> {
    let mut buf = vec![0u8; MAX_FRAME];
    let n = req.emit(u64::MAX, 0, &mut buf)?;
    stream.write_all(&buf[..n]).context("sending HELLO")?;
    let mut head = [0u8; HEADER_LEN];
    stream.read_exact(&mut head).map_err(|e| {
        let why = match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => format!(
                "no HELLO reply within {:?}",
                stream.read_timeout().ok().flatten().unwrap_or_default()
            ),
            _ => "reading HELLO reply (closed: credentials refused?)".to_string(),
        };
        anyhow::Error::new(e).context(why)
    })?;
    let h = Header::parse(&head).map_err(|e| anyhow!("bad HELLO reply header: {e}"))?;
    ensure!(
        h.is_reply() && h.request_id == u64::MAX,
        "not a HELLO reply"
    );
    let mut payload = vec![0u8; h.payload_len as usize];
    stream
        .read_exact(&mut payload)
        .context("reading HELLO reply")?;
    let reply =
        Reply::parse(h.opcode, h.status, &payload).map_err(|e| anyhow!("bad HELLO reply: {e}"))?;
    f(reply)
}

fn refusal(reply: Reply<'_>) -> String {
    match reply.status() {
        Status::NotAuthenticated => {
            "not authenticated (unknown client id, wrong key, or the appliance needs a key: \
             give --key-file or --key)"
                .into()
        }
        other => other.to_string(),
    }
}

/// A fresh random key (for `tmemctl keygen`).
pub fn random_key() -> Result<[u8; KEY_LEN]> {
    let mut key = [0u8; KEY_LEN];
    getrandom::fill(&mut key).map_err(|e| anyhow!("no randomness: {e}"))?;
    Ok(key)
}

/// Makes sure `MSG1_PAYLOAD_LEN` stays what this client sends (a wall-clock timestamp).
const _: () = assert!(MSG1_PAYLOAD_LEN == 8);
