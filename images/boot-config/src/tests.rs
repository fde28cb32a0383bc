//! Host tests of the parser and the command line it makes.

extern crate std;
use super::*;
use std::string::String;

const KEY: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn command_line(text: &str) -> String {
    let mut out = String::new();
    parse(text).unwrap().write_command_line(&mut out).unwrap();
    out
}

fn error(text: &str) -> Error {
    parse(text).unwrap_err()
}

#[test]
fn the_shipped_sample_asks_for_keys_until_one_is_added() {
    assert_eq!(error(SAMPLE).line, 0);
    assert!(error(SAMPLE).message.contains("tmemctl keygen"));
    let with_key = std::format!("{SAMPLE}\nkey = 0x1001 {KEY}\n");
    assert_eq!(
        command_line(&with_key),
        std::format!("-- --listen 0.0.0.0:7777 --memory auto --halt-on-error --key 0x1001:{KEY}")
    );
}

#[test]
fn static_address_becomes_kernel_network_arguments() {
    let text = std::format!(
        "address = 192.168.1.50/24\ngateway = 192.168.1.1\nport = 9000\nmemory = 4GiB\nkey = 7:{KEY}\nkey = 0x8 {KEY}\n"
    );
    assert_eq!(
        command_line(&text),
        std::format!(
            "-ip 192.168.1.50 -mask 255.255.255.0 -gateway 192.168.1.1 -- --listen 0.0.0.0:9000 \
             --memory 4GiB --halt-on-error --key 7:{KEY} --key 0x8:{KEY}"
        )
    );
    let config = parse(&text).unwrap();
    assert_eq!(config.keys, 2);
    let mut summary = String::new();
    config.summary(&mut summary).unwrap();
    assert!(
        !summary.contains(KEY),
        "keys must not reach logs: {summary}"
    );
    assert!(
        summary.contains("192.168.1.50/24 via 192.168.1.1"),
        "{summary}"
    );
}

#[test]
fn insecure_without_keys_is_allowed_only_when_said() {
    assert_eq!(
        command_line("insecure = yes # trusted lab\n"),
        "-- --listen 0.0.0.0:7777 --memory auto --halt-on-error --insecure"
    );
}

#[test]
fn every_mistake_names_its_line() {
    let k = std::format!("key = 1 {KEY}\n");
    let cases: &[(&str, usize, &str)] = &[
        ("memory = lots\n", 1, "memory:"),
        ("memory = 4 parsecs\n", 1, "memory:"),
        ("\nport = 0\n", 2, "port:"),
        ("port = 70000\n", 1, "port:"),
        ("port = 1\nport = 2\n", 2, "twice"),
        ("address = 10.0.0.300/24\n", 1, "address:"),
        ("address = 10.0.0.3\n", 1, "address:"),
        ("address = 10.0.0.3/31\n", 1, "address:"),
        ("gateway = 10.0.0.1\n", 1, "only with a static"),
        ("insecure = maybe\n", 1, "insecure:"),
        ("key = 1 abc\n", 1, "key:"),
        ("key = nope 0123\n", 1, "key:"),
        ("colour = blue\n", 1, "unknown setting"),
        ("just words\n", 1, "name = value"),
    ];
    for (text, line, what) in cases {
        let text = std::format!("{k}{text}");
        let e = error(&text);
        assert_eq!(e.line, line + 1, "{text:?}: {e}");
        assert!(e.message.contains(what), "{text:?}: {e}");
        assert!(std::format!("{e}").starts_with("tmem.conf line"), "{e}");
    }
}

#[test]
fn too_many_keys_are_refused() {
    let mut text = String::new();
    for id in 0..=MAX_KEYS {
        text += &std::format!("key = {id} {KEY}\n");
    }
    assert!(error(&text).message.contains("more than"));
}

#[test]
fn redacted_command_lines_keep_key_ids_only() {
    let line = std::format!(
        "-ip 10.0.0.2 -- --listen 0.0.0.0:1 --key 0x7:{KEY} --key=9:{KEY} --memory 1G"
    );
    let shown = std::format!("{}", Redacted(&line));
    assert_eq!(
        shown,
        "-ip 10.0.0.2 -- --listen 0.0.0.0:1 --key 0x7:<hidden> --key=9:<hidden> --memory 1G"
    );
}

#[test]
fn a_key_argument_without_an_id_is_hidden_whole() {
    let line = std::format!("-- --key {KEY} --memory 1G");
    assert_eq!(
        std::format!("{}", Redacted(&line)),
        "-- --key <hidden> --memory 1G"
    );
}
