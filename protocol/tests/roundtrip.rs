//! Every message survives emit -> parse unchanged, framing works on any split of a byte stream, and no
//! input (random, truncated, bit-flipped) makes a decoder panic.

use proptest::prelude::*;
use protocol::*;

fn frame_of(req: &Request<'_>, id: u64, flags: u16) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_FRAME];
    let n = req.emit(id, flags, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn parse_request(frame: &[u8]) -> (Header, Request<'_>) {
    let header = Header::parse(frame).unwrap();
    assert_eq!(frame_len(frame).unwrap(), Some(frame.len()));
    let req = Request::parse(header.opcode, &frame[HEADER_LEN..]).unwrap();
    (header, req)
}

fn key_strategy() -> impl Strategy<Value = PageKey> {
    (any::<u32>(), any::<[u64; 3]>(), any::<u32>()).prop_map(|(pool, object, index)| PageKey {
        pool,
        object,
        index,
    })
}

/// Decodes everything a server or client could be handed, discarding results: only panics matter.
fn decode_everything(bytes: &[u8]) {
    let _ = frame_len(bytes);
    if let Ok(h) = Header::parse(bytes) {
        let payload = bytes.get(HEADER_LEN..).unwrap_or_default();
        if let Ok(Request::Batch(batch)) = Request::parse(h.opcode, payload) {
            for e in batch {
                let _ = e.request();
                let _ = e.reply();
            }
        }
        if let Ok(Reply::Batch(batch)) = Reply::parse(h.opcode, h.status, payload) {
            for e in batch {
                let _ = e.reply();
            }
        }
    }
    for op in 0..=10u8 {
        let _ = Request::parse(op, bytes);
        let _ = Reply::parse(op, 0, bytes);
    }
    let _ = Page::parse(bytes);
    let _ = StatsView::parse(bytes);
    if let Ok(batch) = BatchIter::parse(bytes) {
        for e in batch {
            let _ = (e.request(), e.reply());
        }
    }
}

proptest! {
    #[test]
    fn put_roundtrip(key in key_strategy(), data in proptest::collection::vec(any::<u8>(), PAGE_SIZE), id: u64) {
        let crc = crc32c(&data);
        let page = Page { encoding: Encoding::Raw, crc, data: &data };
        let frame = frame_of(&Request::Put { key, page }, id, 0);
        let (h, req) = parse_request(&frame);
        prop_assert_eq!(h.request_id, id);
        prop_assert!(!h.is_reply());
        prop_assert_eq!(req, Request::Put { key, page });
    }

    #[test]
    fn batch_roundtrip(keys in proptest::collection::vec(key_strategy(), 1..=MAX_BATCH)) {
        let mut buf = vec![0u8; MAX_FRAME];
        let mut w = BatchWriter::new(&mut buf).unwrap();
        for k in &keys {
            w.push_request(&Request::Get { key: *k }, flags::GET_AND_FREE).unwrap();
        }
        let n = w.finish_request(77, 0).unwrap();
        let (h, req) = parse_request(&buf[..n]);
        prop_assert_eq!(h.opcode, Opcode::Batch as u8);
        let Request::Batch(batch) = req else { panic!("not a batch") };
        prop_assert_eq!(batch.len(), keys.len());
        for (entry, k) in batch.zip(&keys) {
            prop_assert_eq!(entry.flags, flags::GET_AND_FREE);
            prop_assert_eq!(entry.request().unwrap(), Request::Get { key: *k });
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        decode_everything(&bytes);
    }

    #[test]
    fn corrupted_frames_never_panic(flips in proptest::collection::vec((0usize..200, any::<u8>()), 1..8), cut in 0usize..200) {
        let mut buf = vec![0u8; MAX_FRAME];
        let mut w = BatchWriter::new(&mut buf).unwrap();
        let page = Page { encoding: Encoding::Lz4, crc: 1, data: &[1, 2, 3] };
        w.push_request(&Request::Put { key: PageKey::default(), page }, 0).unwrap();
        w.push_request(&Request::FlushObject(FlushObject { pool: 1, object: [1, 2, 3] }), 0).unwrap();
        let n = w.finish_request(1, 0).unwrap();
        let mut frame = buf[..n].to_vec();
        for (at, x) in flips {
            if let Some(b) = frame.get_mut(at) { *b ^= x; }
        }
        decode_everything(&frame);
        decode_everything(&frame[..cut.min(frame.len())]);
    }

    #[test]
    fn framing_on_any_split(split in 0usize..200) {
        let a = frame_of(&Request::Stats, 1, 0);
        let b = frame_of(&Request::Get { key: PageKey::default() }, 2, 0);
        let stream = [a.clone(), b.clone()].concat();
        let split = split.min(stream.len());
        let first = &stream[..split];
        match frame_len(first).unwrap() {
            Some(n) => prop_assert_eq!(n, a.len()),
            None => prop_assert!(split < a.len()),
        }
    }
}

#[test]
fn header_rejects_garbage() {
    assert_eq!(frame_len(b"XXXX"), Err(WireError::BadMagic));
    assert_eq!(frame_len(b"TM"), Ok(None));
    let mut frame = frame_of(&Request::Stats, 1, 0);
    frame[4] = 2;
    assert_eq!(Header::parse(&frame), Err(WireError::BadVersion(2)));
    let mut frame = frame_of(&Request::Stats, 1, 0);
    frame[16..20].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
    assert_eq!(frame_len(&frame), Err(WireError::TooLarge));
}

#[test]
fn page_lengths_are_checked_against_encoding() {
    let raw_short = Page {
        encoding: Encoding::Raw,
        crc: 0,
        data: &[0; 100],
    };
    let frame = frame_of(
        &Request::Put {
            key: PageKey::default(),
            page: raw_short,
        },
        1,
        0,
    );
    assert!(matches!(
        Request::parse(4, &frame[HEADER_LEN..]),
        Err(WireError::Malformed(_))
    ));
    let lz4_full = vec![0u8; PAGE_SIZE];
    let page = Page {
        encoding: Encoding::Lz4,
        crc: 0,
        data: &lz4_full,
    };
    let frame = frame_of(
        &Request::Put {
            key: PageKey::default(),
            page,
        },
        1,
        0,
    );
    assert!(Request::parse(4, &frame[HEADER_LEN..]).is_err());
}

#[test]
fn batch_limits() {
    let mut buf = vec![0u8; MAX_FRAME];
    let mut w = BatchWriter::new(&mut buf).unwrap();
    let data = vec![7u8; PAGE_SIZE];
    let page = Page {
        encoding: Encoding::Raw,
        crc: 0,
        data: &data,
    };
    for _ in 0..MAX_BATCH {
        w.push_request(
            &Request::Put {
                key: PageKey::default(),
                page,
            },
            0,
        )
        .unwrap();
    }
    // A full batch of raw puts fits MAX_PAYLOAD; one more entry is refused without corrupting it.
    assert_eq!(
        w.push_request(
            &Request::Get {
                key: PageKey::default()
            },
            0
        ),
        Err(WireError::TooLarge)
    );
    let n = w.finish_request(1, 0).unwrap();
    assert!(n <= MAX_FRAME);
    assert!(Header::parse(&buf).is_ok());
    // Non-page operations cannot be batched.
    let mut w = BatchWriter::new(&mut buf).unwrap();
    assert!(w.push_request(&Request::Stats, 0).is_err());
    assert!(w.finish_request(1, 0).is_err(), "empty batches are refused");
}

#[test]
fn fill_detection() {
    let mut page = [0u8; PAGE_SIZE];
    assert_eq!(Page::detect_fill(&page), Some(0));
    Page::expand_fill(0x0102_0304_0506_0708, &mut page);
    assert_eq!(Page::detect_fill(&page), Some(0x0102_0304_0506_0708));
    page[4095] ^= 1;
    assert_eq!(Page::detect_fill(&page), None);
}

#[test]
fn unknown_opcode_and_status() {
    assert_eq!(Request::parse(200, &[]), Err(WireError::UnknownOpcode(200)));
    assert!(Reply::parse(5, 999, &[]).is_err());
    assert_eq!(
        Reply::parse(5, Status::NoSpace as u16, b"full").unwrap(),
        Reply::Error {
            status: Status::NoSpace,
            message: b"full"
        }
    );
}

#[test]
fn key_lines() {
    use protocol::keyfile::*;
    const K: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191A1B1C1D1E1F";
    let (id, key) = parse_line(&format!("  0x2a {K} # web")).unwrap().unwrap();
    assert_eq!((id, key[0], key[31]), (42, 0, 0x1f));
    assert_eq!(parse_line("# only a comment"), Ok(None));
    assert_eq!(parse_line(""), Ok(None));
    assert_eq!(parse_line(&format!("7 {K}")).unwrap().unwrap().0, 7);
    assert_eq!(parse_line(&format!("x {K}")), Err(KeyLineError::ClientId));
    assert_eq!(parse_line("1 abcd"), Err(KeyLineError::Key));
    assert_eq!(
        parse_line(&format!("1 {}", &K[..63])),
        Err(KeyLineError::Key)
    );
    assert_eq!(
        parse_line(&format!("1 {K} more")),
        Err(KeyLineError::Fields)
    );
    assert_eq!(parse_line("1"), Err(KeyLineError::Fields));
    assert_eq!(parse_key_hex(&K.replace('0', "g")), None);
}
