//! Golden byte vectors: the exact bytes of each frame kind. If one of these changes, the wire format
//! changed and every deployed appliance and kernel module breaks: bump `VERSION` instead.

use protocol::*;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn emit_request(req: &Request<'_>, id: u64, flags: u16) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_FRAME];
    let n = req.emit(id, flags, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn emit_reply(op: Opcode, reply: &Reply<'_>, id: u64) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_FRAME];
    let n = reply.emit(op as u8, id, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

const KEY: PageKey = PageKey {
    pool: 7,
    object: [1, 2, 0x0102_0304_0506_0708],
    index: 0x2a,
};

#[test]
fn hello_request() {
    let frame = emit_request(&Request::Hello(Hello::new(0x1122_3344_5566_7788)), 1, 0);
    assert_eq!(
        hex(&frame),
        concat!(
            "544d454d",
            "01",
            "01",
            "0000",
            "0100000000000000",
            "10000000",
            "0000",
            "0000",
            "0100",
            "0100",
            "00",
            "00",
            "0000",
            "8877665544332211"
        )
    );
}

#[test]
fn hello_reply() {
    let reply = Reply::Hello(HelloReply {
        version: 1,
        max_batch: 64,
        max_payload: 0x0004_0000,
        nonce: [0xab; 16],
        auth: &[],
    });
    let frame = emit_reply(Opcode::Hello, &reply, 1);
    assert_eq!(
        hex(&frame),
        concat!(
            "544d454d",
            "01",
            "01",
            "0100",
            "0100000000000000",
            "18000000",
            "0000",
            "0000",
            "0100",
            "4000",
            "00000400",
            "abababababababababababababababab"
        )
    );
}

/// HELLO with Noise (auth_method 1): message 1 in `auth`; the reply appends auth_len and message 2.
#[test]
fn hello_with_noise_request_and_reply() {
    let msg1 = [0x11u8; noise::MSG1_LEN];
    let req = Request::Hello(Hello {
        auth_method: AUTH_NOISE,
        auth: &msg1,
        ..Hello::new(0x1122_3344_5566_7788)
    });
    let frame = emit_request(&req, 1, 0);
    assert_eq!(
        hex(&frame[..HEADER_LEN + 16]),
        concat!(
            "544d454d",
            "01",
            "01",
            "0000",
            "0100000000000000",
            "48000000",
            "0000",
            "0000",
            "0100",
            "0100",
            "01",
            "00",
            "3800",
            "8877665544332211"
        )
    );
    assert_eq!(&frame[HEADER_LEN + 16..], &msg1[..]);
    // AES-256-GCM sessions (auth_method 2): the same layout, method byte 02.
    let aes = emit_request(
        &Request::Hello(Hello {
            auth_method: AUTH_NOISE_AESGCM,
            auth: &msg1,
            ..Hello::new(0x1122_3344_5566_7788)
        }),
        1,
        0,
    );
    assert_eq!(aes[HEADER_LEN + 4], 2);
    assert_eq!(
        (&aes[..HEADER_LEN + 4], &aes[HEADER_LEN + 5..]),
        (&frame[..HEADER_LEN + 4], &frame[HEADER_LEN + 5..])
    );
    match Request::parse(Opcode::Hello as u8, &aes[HEADER_LEN..]).unwrap() {
        Request::Hello(h) => assert_eq!((h.auth_method, h.auth), (AUTH_NOISE_AESGCM, &msg1[..])),
        other => panic!("{other:?}"),
    }
    // The prologue is the label and exactly those 16 payload bytes.
    let prologue = noise::prologue(&Hello {
        auth_method: AUTH_NOISE,
        auth: &msg1,
        ..Hello::new(0x1122_3344_5566_7788)
    });
    assert_eq!(&prologue[..noise::PROLOGUE_LABEL.len()], b"tmem/1 HELLO");
    assert_eq!(
        &prologue[noise::PROLOGUE_LABEL.len()..],
        &frame[HEADER_LEN..HEADER_LEN + 16]
    );

    let msg2 = [0x22u8; noise::MSG2_LEN];
    let reply = Reply::Hello(HelloReply {
        version: 1,
        max_batch: 64,
        max_payload: MAX_PAYLOAD as u32,
        nonce: [0xab; 16],
        auth: &msg2,
    });
    let frame = emit_reply(Opcode::Hello, &reply, 1);
    assert_eq!(
        hex(&frame[..HEADER_LEN + 26]),
        concat!(
            "544d454d",
            "01",
            "01",
            "0100",
            "0100000000000000",
            "52000000",
            "0000",
            "0000",
            "0100",
            "4000",
            "04110400",
            "abababababababababababababababab",
            "3800"
        )
    );
    assert_eq!(&frame[HEADER_LEN + 26..], &msg2[..]);
    let h = Header::parse(&frame).unwrap();
    assert_eq!(
        Reply::parse(h.opcode, h.status, &frame[HEADER_LEN..]).unwrap(),
        reply
    );
}

/// A sealed page (encoding 3): opaque bytes, CRC of those bytes, 17..=4112 of them.
#[test]
fn sealed_page() {
    let data = [0x5au8; MAX_PAGE_DATA];
    let page = Page {
        encoding: Encoding::Sealed,
        crc: crc32c(&data),
        data: &data,
    };
    let frame = emit_request(&Request::Put { key: KEY, page }, 3, 0);
    assert_eq!(
        hex(&frame[HEADER_LEN + KEY_LEN..HEADER_LEN + KEY_LEN + 4]),
        "03000000"
    );
    assert_eq!(
        hex(&frame[HEADER_LEN + KEY_LEN + 8..HEADER_LEN + KEY_LEN + 12]),
        "10100000"
    );
    let h = Header::parse(&frame).unwrap();
    assert!(Request::parse(h.opcode, &frame[HEADER_LEN..]).is_ok());
    for bad_len in [SEAL_TAG_LEN, MAX_PAGE_DATA + 1] {
        let short = vec![0u8; bad_len];
        let page = Page {
            encoding: Encoding::Sealed,
            crc: 0,
            data: &short,
        };
        let frame = emit_request(&Request::Put { key: KEY, page }, 3, 0);
        assert!(Request::parse(Opcode::PutPage as u8, &frame[HEADER_LEN..]).is_err());
    }
}

#[test]
fn new_pool_request_and_reply() {
    let req = Request::NewPool(NewPool {
        kind: PoolKind::Persistent,
        page_size: 4096,
    });
    assert_eq!(
        hex(&emit_request(&req, 2, 0)),
        concat!(
            "544d454d",
            "01",
            "02",
            "0000",
            "0200000000000000",
            "08000000",
            "0000",
            "0000",
            "01",
            "00",
            "0000",
            "00100000"
        )
    );
    assert_eq!(
        hex(&emit_reply(Opcode::NewPool, &Reply::NewPool { pool: 7 }, 2)),
        concat!(
            "544d454d",
            "01",
            "02",
            "0100",
            "0200000000000000",
            "04000000",
            "0000",
            "0000",
            "07000000"
        )
    );
}

#[test]
fn put_fill_page() {
    let page = Page {
        encoding: Encoding::Fill,
        crc: 0xdead_beef,
        data: &[0; 8],
    };
    let frame = emit_request(&Request::Put { key: KEY, page }, 3, 0);
    assert_eq!(
        hex(&frame),
        concat!(
            "544d454d",
            "01",
            "04",
            "0000",
            "0300000000000000",
            "34000000",
            "0000",
            "0000",
            // key: pool, index, object[0..3]
            "07000000",
            "2a000000",
            "0100000000000000",
            "0200000000000000",
            "0807060504030201",
            // page: encoding, rsvd, rsvd, crc, len, data
            "02",
            "00",
            "0000",
            "efbeadde",
            "08000000",
            "0000000000000000"
        )
    );
}

/// GET with its flags: swap's exclusive load (GET_AND_FREE 0x2), and a read cache's load that
/// leaves an ephemeral page (GET_KEEP 0x8), each with ACCEPT_LZ4 (0x4).
#[test]
fn get_request_with_flags_and_not_found_reply() {
    for (flags, id, expected) in [
        (
            flags::GET_AND_FREE | flags::ACCEPT_LZ4,
            4,
            concat!("544d454d", "01", "05", "0600", "0400000000000000"),
        ),
        (
            flags::GET_KEEP | flags::ACCEPT_LZ4,
            5,
            concat!("544d454d", "01", "05", "0c00", "0500000000000000"),
        ),
    ] {
        let frame = emit_request(&Request::Get { key: KEY }, id, flags);
        assert_eq!(
            hex(&frame[..HEADER_LEN]),
            format!("{expected}{}", concat!("20000000", "0000", "0000"))
        );
    }
    let miss = Reply::Error {
        status: Status::NotFound,
        message: b"",
    };
    assert_eq!(
        hex(&emit_reply(Opcode::GetPage, &miss, 4)),
        concat!(
            "544d454d",
            "01",
            "05",
            "0100",
            "0400000000000000",
            "00000000",
            "0100",
            "0000"
        )
    );
}

#[test]
fn batch_of_two_gets() {
    let mut buf = vec![0u8; MAX_FRAME];
    let mut b = BatchWriter::new(&mut buf).unwrap();
    b.push_request(&Request::Get { key: KEY }, 0).unwrap();
    b.push_request(
        &Request::FlushPage {
            key: PageKey { index: 1, ..KEY },
        },
        0,
    )
    .unwrap();
    let n = b.finish_request(9, 0).unwrap();
    let key_hex = concat!(
        "07000000",
        "2a000000",
        "0100000000000000",
        "0200000000000000",
        "0807060504030201"
    );
    let key1_hex = concat!(
        "07000000",
        "01000000",
        "0100000000000000",
        "0200000000000000",
        "0807060504030201"
    );
    let expected = format!(
        "{}{}{}{}{}{}",
        concat!(
            "544d454d",
            "01",
            "09",
            "0000",
            "0900000000000000",
            "54000000",
            "0000",
            "0000"
        ),
        "02000000",
        concat!("05", "00", "0000", "20000000"),
        key_hex,
        concat!("06", "00", "0000", "20000000"),
        key1_hex
    );
    assert_eq!(hex(&buf[..n]), expected);
}

#[test]
fn stats_reply() {
    let mut scratch = [0u8; 16];
    let view = StatsView::encode(&[5, 0x0100], &mut scratch).unwrap();
    assert_eq!(
        hex(&emit_reply(Opcode::Stats, &Reply::Stats(view), 5)),
        concat!(
            "544d454d",
            "01",
            "08",
            "0100",
            "0500000000000000",
            "14000000",
            "0000",
            "0000",
            "02000000",
            "0500000000000000",
            "0001000000000000"
        )
    );
}

/// The limits an independent implementation needs, as docs/protocol.md states them.
#[test]
fn limits() {
    assert_eq!(MAX_PAYLOAD, 266_500, "4 + 64 x (8 + 32 + 12 + 4096 + 16)");
    assert_eq!(MAX_FRAME, 266_524);
    assert_eq!(MAX_BATCH, 64);
    assert_eq!(AUTH_MAX, 64);
    assert_eq!(MAX_ERROR_MESSAGE, 256);
}

/// The STATS ids docs/protocol.md lists, by number (append-only).
#[test]
fn stat_ids() {
    let listed: Vec<(u16, &str)> = StatId::ALL.iter().map(|&s| (s as u16, s.name())).collect();
    for (i, (id, _)) in listed.iter().enumerate() {
        assert_eq!(*id as usize, i, "ids are dense and in order");
    }
    let doc = include_str!("../../docs/protocol.md");
    for (id, name) in listed {
        assert!(
            doc.contains(&format!("| {id} | `{name}` |")),
            "docs/protocol.md does not list STATS id {id} `{name}`"
        );
    }
}
