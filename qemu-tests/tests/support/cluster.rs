//! Several host-mode appliances with keys, for the replica VM tests: each on its own 127.0.0.1
//! port (the guest reaches it as 10.0.2.2:PORT), killable, restartable empty on the same port,
//! stoppable; and the client identity (id and key) they all know.

#![allow(dead_code)] // not every test file uses every helper

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use protocol::StatId;
use qemu_tests::linux_vm::{appliance_binary, wait_listening};
use qemu_tests::{free_port, poll, ChildGuard};
use tmemctl::client::Client;
use tmemctl::secure::Identity;

/// The client identity of the tests (its key is in every appliance's key ring).
pub const CLIENT_ID: u64 = 0x7e57_c11e;

/// A fixed test key (tests only; real keys come from `tmemctl keygen`).
pub fn client_key() -> [u8; 32] {
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(37).wrapping_add(11);
    }
    k
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The kernel command line words that give kclient this identity (see the initramfs `init`).
pub fn client_args() -> String {
    format!(
        "tmem_client_id={CLIENT_ID:#x} tmem_key={}",
        hex(&client_key())
    )
}

/// One appliance process.
pub struct Node {
    binary: PathBuf,
    memory: String,
    /// The key it holds for [`CLIENT_ID`].
    key: [u8; 32],
    pub port: u16,
    child: Option<ChildGuard>,
}

impl Node {
    /// Starts an appliance with the test client's key on a free port.
    pub fn start(memory: &str) -> Node {
        Node::start_with_key(memory, client_key())
    }

    /// Starts an appliance that holds `key` for the test client id (another key than the
    /// client's: it must refuse the client).
    pub fn start_with_key(memory: &str, key: [u8; 32]) -> Node {
        let mut n = Node {
            binary: appliance_binary(),
            memory: memory.to_string(),
            key,
            port: free_port(),
            child: None,
        };
        n.restart();
        n
    }

    /// Starts it (again, empty) on its port; waits (bounded) until it listens.
    pub fn restart(&mut self) {
        self.kill();
        let mut cmd = Command::new(&self.binary);
        cmd.args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(["--memory", &self.memory, "--log-level", "warn"])
            .args(["--key", &format!("{CLIENT_ID:#x}:{}", hex(&self.key))])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = ChildGuard::new(cmd.spawn().expect("spawn appliance"));
        wait_listening(&mut child, Duration::from_secs(20)).expect("appliance listening");
        self.child = Some(child);
    }

    /// Starts it again, empty, on its port with `memory` of store from now on.
    pub fn restart_with_memory(&mut self, memory: &str) {
        self.memory = memory.to_string();
        self.restart();
    }

    /// SIGKILL (its pages are gone with it).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill();
        }
    }

    /// SIGSTOP: connections stay open, nothing is answered.
    pub fn pause(&self) {
        self.signal(Signal::SIGSTOP);
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal(Signal::SIGCONT);
    }

    fn signal(&self, sig: Signal) {
        if let Some(c) = &self.child {
            nix::sys::signal::kill(Pid::from_raw(c.id() as i32), sig).expect("signal appliance");
        }
    }

    /// Its process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The guest's address of it.
    pub fn target(&self) -> String {
        format!("10.0.2.2:{}", self.port)
    }

    /// Pages it holds now (0 if it does not answer).
    pub fn pages(&self) -> u64 {
        self.stat(StatId::Pages)
    }

    /// Gets it answered with a page so far (0 if it does not answer).
    pub fn get_hits(&self) -> u64 {
        self.stat(StatId::GetHits)
    }

    /// Pages it evicted from ephemeral pools to make room (0 if it does not answer).
    pub fn evictions(&self) -> u64 {
        self.stat(StatId::Evictions)
    }

    fn stat(&self, id: StatId) -> u64 {
        let me = Identity::with_key(CLIENT_ID, client_key());
        Client::connect_as(
            &format!("127.0.0.1:{}", self.port),
            &me,
            Duration::from_secs(3),
        )
        .and_then(|mut c| c.stats())
        .ok()
        .and_then(|v| v.get(id as usize).copied())
        .unwrap_or(0)
    }
}

/// `n` appliances of `memory` each.
pub fn cluster(n: usize, memory: &str) -> Vec<Node> {
    (0..n).map(|_| Node::start(memory)).collect()
}

/// `remote_target` for them.
pub fn targets(nodes: &[Node]) -> String {
    nodes.iter().map(Node::target).collect::<Vec<_>>().join(",")
}

/// Waits (bounded) until the appliances together hold at least `pages` pages.
pub fn wait_pages(nodes: &[Node], pages: u64, timeout: Duration) {
    let got = poll(timeout, Duration::from_millis(500), || {
        let total: u64 = nodes.iter().map(Node::pages).sum();
        Ok((total >= pages).then_some(total))
    })
    .expect("poll appliances");
    assert!(got.is_some(), "the appliances never held {pages} pages");
}
