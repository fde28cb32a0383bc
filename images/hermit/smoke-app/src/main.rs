//! Smoke test for the Hermit image pipeline: prints a greeting and its arguments, then echoes every
//! TCP connection on `--listen ADDR` (default `0.0.0.0:7777`) with Nagle off.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

fn echo(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n])?;
    }
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    println!("hermit-smoke: hello from Hermit, args = {args:?}");
    let env: Vec<(String, String)> = std::env::vars().collect();
    println!("hermit-smoke: env = {env:?}");
    let listen = args
        .windows(2)
        .find(|w| w[0] == "--listen")
        .map(|w| w[1].clone())
        .unwrap_or_else(|| "0.0.0.0:7777".to_owned());
    let listener = TcpListener::bind(&listen)?;
    println!("hermit-smoke: listening on {listen}");
    for stream in listener.incoming() {
        let stream = stream?;
        std::thread::spawn(move || {
            if let Err(e) = echo(stream) {
                eprintln!("hermit-smoke: connection error: {e}");
            }
        });
    }
    Ok(())
}
