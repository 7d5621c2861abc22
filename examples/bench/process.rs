//! A server under test in a child process: the bench binary itself, started
//! with `--serve KIND --name NAME` and the arguments given, which prints
//! `listening on ADDRESS` once ready. Shared by `bench` and `bench_grpc`.

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
};

/// A server under test, in a child process, killed when dropped.
pub struct ServerProcess {
    pub kind: &'static str,
    pub child: Child,
    pub address: String,
}

impl ServerProcess {
    /// Starts this binary as a `kind` server with `args`, and waits for its
    /// address.
    pub fn spawn(kind: &'static str, args: &[String]) -> ServerProcess {
        let name = format!("pipeserve-bench-{kind}-{}", std::process::id());
        // `BENCH_SERVER_EXE`: servers from another build of the bench (an
        // older commit's, for a before-and-after in one run).
        let exe = std::env::var_os("BENCH_SERVER_EXE")
            .map_or_else(|| std::env::current_exe().unwrap(), Into::into);
        let mut child = Command::new(exe)
            .args(["--serve", kind, "--name", &name])
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the server");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let address = loop {
            let line = lines.next().expect("the server exited").unwrap();
            if let Some(address) = line.trim().strip_prefix("listening on ") {
                break address.to_owned();
            }
        };
        ServerProcess {
            kind,
            child,
            address,
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Killed, the server could not remove its socket file.
        if cfg!(unix) {
            let _ = std::fs::remove_file(&self.address);
        }
    }
}

/// The line a server child prints once it is ready.
pub fn announce(address: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {address}").unwrap();
    out.flush().unwrap();
}
