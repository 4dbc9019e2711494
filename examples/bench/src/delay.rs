//! A wire with latency for the namespace labs: the kernel here has no `netem`, so packets
//! are queued to this process (iptables `NFQUEUE`) and let through after a fixed delay.
//!
//! The queue sits in the `raw` table's PREROUTING of a router's public side, before
//! connection tracking: a held packet has not reached the router yet, as on a real wire,
//! so the router's NAT sees it only when it "arrives". Without latency, two routers
//! next to each other see each other's hole-punch packets within microseconds, and a
//! router that answers unsolicited packets (a reset, an ICMP error) wins every race
//! against its own host's packet unless both leave within those microseconds.

use std::collections::VecDeque;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The hidden first argument that makes this binary a delaying queue.
pub const DELAY_ARG: &str = "--delay-queue";

/// The longest a delaying queue runs (it also stops when its parent goes away).
const LIFETIME: Duration = Duration::from_secs(30 * 60);

/// A delaying queue in its own process; killed when dropped.
pub struct Delay {
    child: Child,
}

impl Drop for Delay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes every packet entering a router from its public side (`wan`) wait `delay`: a
/// queue rule in the router's namespace `ns` and this binary serving it.
pub fn inbound(ns: &str, queue: u16, delay: Duration) -> anyhow::Result<Delay> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(std::env::current_exe().context("this binary")?)
        .arg(DELAY_ARG)
        .arg(queue.to_string())
        .arg(delay.as_micros().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("spawning a delaying queue")?;
    // It says "bound" once the queue is there; only then may packets be sent to it (a
    // queue nobody serves drops them).
    let mut out = child.stdout.take().context("its stdout")?;
    let mut word = [0u8; 5];
    out.read_exact(&mut word).context("the delaying queue did not start")?;
    if &word != b"bound" {
        bail!("the delaying queue said {:?}", String::from_utf8_lossy(&word));
    }
    let rule = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "iptables",
            "-t",
            "raw",
            "-A",
            "PREROUTING",
            "-i",
            "wan",
        ])
        .args(["-j", "NFQUEUE", "--queue-num", &queue.to_string()])
        .status()
        .context("iptables")?;
    if !rule.success() {
        bail!("iptables refused the NFQUEUE rule");
    }
    Ok(Delay { child })
}

/// The queue's process: `<queue> <micros>`. Holds each packet `micros`, in order, then
/// lets it through; stops when its stdin closes (the parent went away) or after
/// [`LIFETIME`].
pub fn delay_main(args: Vec<String>) -> anyhow::Result<()> {
    let [queue, micros] = args.as_slice() else {
        bail!("{DELAY_ARG} <queue number> <delay in microseconds>");
    };
    let queue: u16 = queue.parse().context("queue number")?;
    let delay = Duration::from_micros(micros.parse().context("delay")?);
    let mut q = nfq::Queue::open().context("netfilter queue")?;
    q.bind(queue).context("binding the queue")?;
    q.set_nonblocking(true);
    println!("bound");
    let orphaned = Arc::new(AtomicBool::new(false));
    let flag = orphaned.clone();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        flag.store(true, Ordering::Relaxed);
    });
    let started = Instant::now();
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    while !orphaned.load(Ordering::Relaxed) && started.elapsed() < LIFETIME {
        loop {
            match q.recv() {
                Ok(m) => held.push_back((Instant::now() + delay, m)),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e).context("reading the queue"),
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            let (_, mut m) = held.pop_front().expect("a held packet");
            m.set_verdict(nfq::Verdict::Accept);
            q.verdict(m).context("letting a packet through")?;
        }
        // Packets wait up to this much longer than asked: a fifth of a millisecond.
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(())
}
