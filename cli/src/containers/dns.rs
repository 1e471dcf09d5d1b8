//! The name server of a user-defined network, Docker's embedded DNS in
//! small: the network's holder answers on the bridge's address, UDP port
//! 53, with the addresses of the running members by name, short id and
//! `--network-alias`. Members list it as their first nameserver, before
//! the host's. Any other name is REFUSED, so resolvers go on to the next
//! nameserver; a member's name asked for another type (AAAA) gets an empty
//! answer.
//!
//! /etc/hosts (see `networks`) names the members too; this is for the
//! programs that ask DNS directly (`nslookup`, `dig`, resolvers of their
//! own).
//!
//! Messages are parsed defensively (RFC 1035): one question, opcode QUERY,
//! names of at most 255 bytes in uncompressed labels; anything else gets
//! FORMERR or NOTIMP, and an unreadable packet no answer.

use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};

/// How long resolvers may keep an answer: members come and go.
const TTL_SECS: u32 = 10;
const TYPE_A: u16 = 1;
const CLASS_IN: u16 = 1;
const RCODE_FORMERR: u8 = 1;
const RCODE_NOTIMP: u8 = 4;
const RCODE_REFUSED: u8 = 5;

/// Serves queries on `socket` until `stop` is set (looked at every
/// second), answering names with `lookup` (lower-case, no trailing dot).
pub fn serve(socket: UdpSocket, stop: &AtomicBool, lookup: impl Fn(&str) -> Option<Ipv4Addr>) {
    let _ = socket.set_read_timeout(Some(std::time::Duration::from_secs(1)));
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else { continue };
        if let Some(reply) = answer(&buf[..n], &lookup) {
            let _ = socket.send_to(&reply, peer);
        }
    }
}

/// The reply to one query, or None for a packet too short to reply to.
pub fn answer(query: &[u8], lookup: &impl Fn(&str) -> Option<Ipv4Addr>) -> Option<Vec<u8>> {
    let header = query.get(..12)?;
    if header[2] & 0x80 != 0 {
        return None; // A response, not a query.
    }
    let opcode = (header[2] >> 3) & 0x0f;
    let count = |i: usize| u16::from_be_bytes([header[i], header[i + 1]]);
    let reply_header = |rcode: u8, questions: u16, answers: u16| {
        let mut h = Vec::with_capacity(12);
        h.extend_from_slice(&header[..2]);
        // QR, the query's opcode and RD, AA; RA; the code.
        h.push(0x80 | (opcode << 3) | 0x04 | (header[2] & 0x01));
        h.push(0x80 | rcode);
        h.extend_from_slice(&questions.to_be_bytes());
        h.extend_from_slice(&answers.to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 0]);
        h
    };
    if opcode != 0 {
        return Some(reply_header(RCODE_NOTIMP, 0, 0));
    }
    let Some((name, end)) = (count(4) == 1).then(|| read_name(query, 12)).flatten() else {
        return Some(reply_header(RCODE_FORMERR, 0, 0));
    };
    let Some(fixed) = query.get(end..end + 4) else { return Some(reply_header(RCODE_FORMERR, 0, 0)) };
    let (qtype, qclass) = (u16::from_be_bytes([fixed[0], fixed[1]]), u16::from_be_bytes([fixed[2], fixed[3]]));
    let question = &query[12..end + 4];
    let Some(ip) = lookup(&name) else {
        let mut reply = reply_header(RCODE_REFUSED, 1, 0);
        reply.extend_from_slice(question);
        return Some(reply);
    };
    let wanted = qtype == TYPE_A && qclass == CLASS_IN;
    let mut reply = reply_header(0, 1, u16::from(wanted));
    reply.extend_from_slice(question);
    if wanted {
        reply.extend_from_slice(&[0xc0, 12]); // The name: a pointer to the question's.
        reply.extend_from_slice(&TYPE_A.to_be_bytes());
        reply.extend_from_slice(&CLASS_IN.to_be_bytes());
        reply.extend_from_slice(&TTL_SECS.to_be_bytes());
        reply.extend_from_slice(&4u16.to_be_bytes());
        reply.extend_from_slice(&ip.octets());
    }
    Some(reply)
}

/// The name at `at` (uncompressed labels), lower-case and dot-separated,
/// with the offset just past it.
fn read_name(msg: &[u8], mut at: usize) -> Option<(String, usize)> {
    let mut labels: Vec<String> = Vec::new();
    let mut total = 0;
    loop {
        let len = usize::from(*msg.get(at)?);
        at += 1;
        if len == 0 {
            return Some((labels.join("."), at));
        }
        // (Compression pointers and extended labels have no place in a question.)
        if len > 63 {
            return None;
        }
        total += len + 1;
        if total > 255 {
            return None;
        }
        let label = msg.get(at..at + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        at += len;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: u16) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&CLASS_IN.to_be_bytes());
        q
    }

    fn lookup(name: &str) -> Option<Ipv4Addr> {
        (name == "web").then_some(Ipv4Addr::new(10, 89, 1, 2))
    }

    #[test]
    fn a_members_name_gets_its_address() {
        let q = query("Web", TYPE_A);
        let r = answer(&q, &lookup).unwrap();
        assert_eq!(&r[..2], [0x12, 0x34], "the query's id");
        assert_eq!((r[2] & 0x80, r[3] & 0x0f), (0x80, 0), "a response, NOERROR");
        assert_eq!(&r[6..8], [0, 1], "one answer");
        assert_eq!(&r[12..q.len()], &q[12..], "the question again");
        assert_eq!(&r[r.len() - 4..], [10, 89, 1, 2]);
    }

    #[test]
    fn other_names_are_refused_and_other_types_get_no_answer() {
        let r = answer(&query("example.com", TYPE_A), &lookup).unwrap();
        assert_eq!((r[3] & 0x0f, &r[6..8]), (RCODE_REFUSED, &[0u8, 0][..]));
        let r = answer(&query("web", 28), &lookup).unwrap();
        assert_eq!((r[3] & 0x0f, &r[6..8]), (0, &[0u8, 0][..]), "AAAA of a member: empty");
    }

    #[test]
    fn malformed_queries_get_errors_not_panics() {
        assert!(answer(&[0; 5], &lookup).is_none());
        let mut q = query("web", TYPE_A);
        q[5] = 2; // Two questions.
        assert_eq!(answer(&q, &lookup).unwrap()[3] & 0x0f, RCODE_FORMERR);
        let mut q = query("web", TYPE_A);
        q[2] = 0x28; // Opcode 5 (UPDATE).
        assert_eq!(answer(&q, &lookup).unwrap()[3] & 0x0f, RCODE_NOTIMP);
        let q = query("web", TYPE_A);
        assert_eq!(answer(&q[..q.len() - 3], &lookup).unwrap()[3] & 0x0f, RCODE_FORMERR, "cut short");
        let mut q = query("web", TYPE_A);
        q[12] = 0xc0; // A pointer where a label belongs.
        assert_eq!(answer(&q, &lookup).unwrap()[3] & 0x0f, RCODE_FORMERR);
        let long = vec!["a"; 200].join(".");
        assert_eq!(answer(&query(&long, TYPE_A), &lookup).unwrap()[3] & 0x0f, RCODE_FORMERR);
    }
}
