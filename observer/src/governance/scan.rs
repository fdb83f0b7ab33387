//! The fast path of the flow-log reader: one line's bytes in, a borrowed
//! [`FlowLine`] out, or `None` when this scanner cannot read it.
//!
//! serde_json's derive reads about 200,000 daemon-written lines a second
//! per core; the offline commands need a million. This scanner reads the
//! fields [`FlowLine`] keeps and validates everything else as JSON without
//! building it (strings skipped sixteen bytes at a time), borrowing every
//! string that has no escape. Text it read before (an end after its
//! address, an edge's verdict, an object it skipped) is taken from its
//! memo (`memo.rs`) when the line repeats it byte for byte, which in a
//! flow log is most of a line. It is exact or silent: whatever it accepts,
//! serde_json's derive of [`FlowLine`] accepts with the same value (a
//! property test checks it, also after a line that filled the memo), and
//! whatever it does not read (an error, a duplicate field, a shape it does
//! not know) goes to that derive, which has the last word and the error
//! message.

use std::{borrow::Cow, net::IpAddr};

use super::{
    line::{
        FlowLine, LineBackend, LineDns, LinePeer, LinePolicy, LineService, LineTraffic, LineVerdict, LineWorkload,
        RawLabels, RawPolicies,
    },
    memo::{self, Memo},
};

/// Deeper input goes to serde_json (whose limit is 128).
const MAX_DEPTH: u32 = 100;

/// Reads flow-log lines, remembering what it read (`memo.rs`) so that the
/// same text met again is not read again.
#[derive(Debug, Default)]
pub struct Scanner {
    memo: Memo,
}

impl Scanner {
    /// Reads one line, or `None` (the caller asks serde_json).
    pub fn line<'a>(&mut self, bytes: &'a [u8]) -> Option<FlowLine<'a>> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut scan = Scan { text, bytes, at: 0, memo: &mut self.memo };
        let line = scan.flow_line()?;
        scan.ws();
        (scan.at == bytes.len()).then_some(line)
    }
}

struct Scan<'a, 'm> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
    memo: &'m mut Memo,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGH: u64 = 0x8080_8080_8080_8080;

/// Where the first of eight bytes (little-endian) that is `"`, `\` or a
/// control character is, or `None`.
///
/// Each test sets the high bit of a matching byte; a borrow can also set it
/// in bytes above a match, never below one, so the lowest bit set is exact.
fn special(word: u64) -> Option<usize> {
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
    let below_space = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    let found = zero(word ^ (ONES * u64::from(b'"'))) | zero(word ^ (ONES * u64::from(b'\\'))) | below_space;
    (found != 0).then(|| found.trailing_zeros() as usize / 8)
}

/// How many bytes of `bytes` come before the first `"`, `\\` or control
/// character (all of them when there is none): sixteen at a time where
/// SSE2 is (always, on x86-64), eight at a time elsewhere.
fn special_from(bytes: &[u8]) -> usize {
    let mut at = 0;
    #[cfg(target_arch = "x86_64")]
    while let Some(chunk) = bytes.get(at..at + 16) {
        if let Some(offset) = special16(chunk.try_into().unwrap_or(&[0; 16])) {
            return at + offset;
        }
        at += 16;
    }
    while let Some(chunk) = bytes.get(at..at + 8) {
        if let Some(offset) = special(u64::from_le_bytes(chunk.try_into().unwrap_or_default())) {
            return at + offset;
        }
        at += 8;
    }
    at + bytes[at..].iter().position(|byte| matches!(byte, b'"' | b'\\' | 0..=0x1f)).unwrap_or(bytes.len() - at)
}

/// [`special`] for sixteen bytes, with SSE2.
#[cfg(target_arch = "x86_64")]
fn special16(bytes: &[u8; 16]) -> Option<usize> {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of x86-64; the load reads the sixteen bytes of
    // `bytes` unaligned, and the rest works on registers.
    let mask = unsafe {
        let chunk = _mm_loadu_si128(bytes.as_ptr().cast());
        let quote = _mm_cmpeq_epi8(chunk, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(chunk, _mm_set1_epi8(b'\\' as i8));
        // Below 0x20 (unsigned): the minimum of the byte and 0x1f is the byte.
        let control = _mm_cmpeq_epi8(_mm_min_epu8(chunk, _mm_set1_epi8(0x1f)), chunk);
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
    };
    (mask != 0).then(|| mask.trailing_zeros() as usize)
}

/// Sets bit `bit` of `seen`; `None` when it was set (a duplicate field,
/// which serde's derive refuses).
fn once(seen: &mut u32, bit: u32) -> Option<()> {
    let mask = 1 << bit;
    if *seen & mask != 0 {
        return None;
    }
    *seen |= mask;
    Some(())
}

impl<'a> Scan<'a, '_> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.at += 1)
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        self.ws();
        self.bytes.get(self.at..self.at + word.len()).filter(|found| *found == word.as_bytes())?;
        self.at += word.len();
        Some(())
    }

    /// `null` (consumed) or not (nothing consumed).
    fn null(&mut self) -> Option<bool> {
        if self.peek()? == b'n' {
            self.literal("null")?;
            return Some(true);
        }
        Some(false)
    }

    /// A string, borrowed when it has no escape.
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let (raw, escaped) = self.string_span()?;
        if escaped {
            // Rare: serde_json unescapes (and refuses lone surrogates).
            return serde_json::from_str::<String>(raw).ok().map(Cow::Owned);
        }
        Some(Cow::Borrowed(&raw[1..raw.len() - 1]))
    }

    /// The string's text with its quotes, and whether it has an escape.
    fn string_span(&mut self) -> Option<(&'a str, bool)> {
        self.eat(b'"')?;
        let start = self.at - 1;
        let mut escaped = false;
        loop {
            // Straight to the byte that matters, not through the ones before it.
            self.at += special_from(&self.bytes[self.at..]);
            match *self.bytes.get(self.at)? {
                b'"' => break,
                b'\\' => {
                    escaped = true;
                    self.at += 1;
                    match *self.bytes.get(self.at)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
                        b'u' => {
                            let hex = self.bytes.get(self.at + 1..self.at + 5)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.at += 5;
                        }
                        _ => return None,
                    }
                }
                0..=0x1f => return None,
                _ => self.at += 1,
            }
        }
        self.at += 1;
        let raw = self.text.get(start..self.at)?;
        if escaped && raw.contains("\\u") {
            // Surrogate pairs are serde_json's to judge.
            serde_json::from_str::<serde::de::IgnoredAny>(raw).ok()?;
        }
        Some((raw, escaped))
    }

    /// An unsigned integer as serde_json reads one for `u64` (no sign, no
    /// fraction, no exponent, no leading zero, no overflow).
    fn unsigned(&mut self) -> Option<u64> {
        self.ws();
        let start = self.at;
        let mut value: u64 = 0;
        while let Some(digit) = self.bytes.get(self.at).filter(|b| b.is_ascii_digit()) {
            value = value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))?;
            self.at += 1;
        }
        let len = self.at - start;
        if len == 0 || (len > 1 && self.bytes[start] == b'0') {
            return None;
        }
        if matches!(self.bytes.get(self.at), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        Some(value)
    }

    /// Any number, validated by JSON's grammar.
    fn number(&mut self) -> Option<()> {
        self.ws();
        if self.bytes.get(self.at) == Some(&b'-') {
            self.at += 1;
        }
        let digits = |scan: &mut Self| {
            let start = scan.at;
            while scan.bytes.get(scan.at).is_some_and(u8::is_ascii_digit) {
                scan.at += 1;
            }
            scan.at - start
        };
        let start = self.at;
        let whole = digits(self);
        if whole == 0 || (whole > 1 && self.bytes[start] == b'0') {
            return None;
        }
        if self.bytes.get(self.at) == Some(&b'.') {
            self.at += 1;
            if digits(self) == 0 {
                return None;
            }
        }
        if matches!(self.bytes.get(self.at), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.bytes.get(self.at), Some(b'+' | b'-')) {
                self.at += 1;
            }
            if digits(self) == 0 {
                return None;
            }
        }
        Some(())
    }

    /// Any value, validated and skipped.
    fn skip(&mut self, depth: u32) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string_span().map(drop),
            b'{' => self.object(|scan, _| scan.skip(depth + 1)),
            b'[' => self.array(|scan| scan.skip(depth + 1)),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    /// An object, each member's value handed to `member` with its key.
    fn object(&mut self, member: impl FnMut(&mut Self, &str) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        self.members(member)
    }

    /// An object's members from its first or a later one to its `}`.
    fn members(&mut self, mut member: impl FnMut(&mut Self, &str) -> Option<()>) -> Option<()> {
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            member(self, &key)?;
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn array(&mut self, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.at += 1;
            return Some(());
        }
        loop {
            item(self)?;
            match self.peek()? {
                b',' => self.at += 1,
                b']' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn optional<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.null()? { Some(None) } else { read(self).map(Some) }
    }

    fn flow_line(&mut self) -> Option<FlowLine<'a>> {
        let mut seen = 0_u32;
        let (mut event, mut node, mut protocol, mut local, mut state) = (None, None, None, None, None);
        let (mut first_seen, mut last_seen, mut src, mut dst) = (None, None, None, None);
        let (mut to_dst, mut to_src, mut verdict) = (None, None, None);
        self.object(|scan, key| {
            match key {
                "event" => {
                    once(&mut seen, 0)?;
                    event = Some(scan.string()?);
                }
                "node" => {
                    once(&mut seen, 1)?;
                    node = Some(scan.string()?);
                }
                "protocol" => {
                    once(&mut seen, 2)?;
                    protocol = Some(scan.string()?);
                }
                "src" => {
                    once(&mut seen, 3)?;
                    src = Some(scan.peer()?);
                }
                "dst" => {
                    once(&mut seen, 4)?;
                    dst = Some(scan.peer()?);
                }
                "local" => {
                    once(&mut seen, 5)?;
                    local = Some(scan.string()?);
                }
                "state" => {
                    once(&mut seen, 6)?;
                    state = Some(scan.string()?);
                }
                "to_dst" => {
                    once(&mut seen, 7)?;
                    to_dst = Some(scan.traffic()?);
                }
                "to_src" => {
                    once(&mut seen, 8)?;
                    to_src = Some(scan.traffic()?);
                }
                "first_seen" => {
                    once(&mut seen, 9)?;
                    first_seen = Some(scan.string()?);
                }
                "last_seen" => {
                    once(&mut seen, 10)?;
                    last_seen = Some(scan.string()?);
                }
                "verdict" => {
                    once(&mut seen, 11)?;
                    let edge = src
                        .as_ref()
                        .zip(dst.as_ref())
                        .map(|(src, dst): (&LinePeer<'_>, &LinePeer<'_>)| (src.ip, dst.ip, dst.port));
                    verdict = scan.optional(|scan| scan.verdict(edge))?;
                }
                _ => scan.skip_member(key)?,
            }
            Some(())
        })?;
        Some(FlowLine {
            event: event?,
            node: node?,
            protocol: protocol?,
            src: src?,
            dst: dst?,
            local: local?,
            state: state?,
            to_dst: to_dst?,
            to_src: to_src?,
            first_seen: first_seen?,
            last_seen: last_seen?,
            verdict,
        })
    }

    fn traffic(&mut self) -> Option<LineTraffic> {
        let (mut seen, mut packets, mut bytes) = (0, None, None);
        self.object(|scan, key| {
            match key {
                "packets" => {
                    once(&mut seen, 0)?;
                    packets = Some(scan.unsigned()?);
                }
                "bytes" => {
                    once(&mut seen, 1)?;
                    bytes = Some(scan.unsigned()?);
                }
                _ => scan.skip(2)?,
            }
            Some(())
        })?;
        Some(LineTraffic { packets: packets?, bytes: bytes? })
    }

    /// An end. As the daemon writes one (`ip` and `port` first), the rest
    /// is taken from the memo when its text was read before for the same
    /// address; any other order is read as it comes.
    fn peer(&mut self) -> Option<LinePeer<'a>> {
        let start = self.at;
        if let Some(peer) = self.peer_after_address() {
            return Some(peer);
        }
        self.at = start;
        let mut seen = 0_u32;
        let mut peer = LinePeer::at(IpAddr::from([0, 0, 0, 0]), None);
        self.object(|scan, key| scan.peer_member(&mut peer, &mut seen, key))?;
        (seen & 1 == 1).then_some(peer)
    }

    /// An end that starts with its `ip` and `port`.
    fn peer_after_address(&mut self) -> Option<LinePeer<'a>> {
        self.eat(b'{')?;
        self.key("ip")?;
        let ip: IpAddr = self.string()?.parse().ok()?;
        self.eat(b',')?;
        let before_port = self.at;
        let has_port = self.key("port").is_some();
        let port = if has_port {
            let port = self.optional(|scan| u16::try_from(scan.unsigned()?).ok())?;
            self.eat(b',')?;
            port
        } else {
            self.at = before_port;
            None
        };
        self.ws();
        let from = self.at;
        let key = (ip, has_port);
        if let Some(known) = self.memo.ends.get(&key).filter(|known| known.matches(&self.bytes[from..])) {
            let mut peer = known.recall(self.text, from);
            self.at += known.len();
            self.memo.recalled += 1;
            peer.ip = ip;
            if has_port {
                // Else the port, if any, came later, in the text recalled.
                peer.port = port;
            }
            return Some(peer);
        }
        let mut seen = if has_port { 0b11 } else { 0b01 };
        let mut peer = LinePeer::at(ip, port);
        self.members(|scan, key| scan.peer_member(&mut peer, &mut seen, key))?;
        if let Some(known) = memo::remember(&peer, self.text, from, self.at) {
            memo::bounded_insert(&mut self.memo.ends, key, known);
        }
        Some(peer)
    }

    /// `"key":`, the key given.
    fn key(&mut self, key: &str) -> Option<()> {
        (self.string()? == key).then_some(())?;
        self.eat(b':')
    }

    /// One member of an end.
    fn peer_member(&mut self, peer: &mut LinePeer<'a>, seen: &mut u32, key: &str) -> Option<()> {
        match key {
            "ip" => {
                once(seen, 0)?;
                peer.ip = self.string()?.parse().ok()?;
            }
            "port" => {
                once(seen, 1)?;
                peer.port = self.optional(|scan| u16::try_from(scan.unsigned()?).ok())?;
            }
            "kind" => {
                once(seen, 2)?;
                peer.kind = self.optional(Self::string)?;
            }
            "namespace" => {
                once(seen, 3)?;
                peer.namespace = self.optional(Self::string)?;
            }
            "pod" => {
                once(seen, 4)?;
                peer.pod = self.optional(Self::string)?;
            }
            "uid" => {
                once(seen, 5)?;
                peer.uid = self.optional(Self::string)?;
            }
            "node" => {
                once(seen, 6)?;
                peer.node = self.optional(Self::string)?;
            }
            "workload" => {
                once(seen, 7)?;
                peer.workload = self.optional(Self::workload)?;
            }
            "labels" => {
                once(seen, 8)?;
                peer.labels = self.labels()?;
            }
            "service" => {
                once(seen, 9)?;
                peer.service = self.optional(Self::service)?;
            }
            "dns" => {
                once(seen, 10)?;
                peer.dns = self.optional(Self::dns)?;
            }
            "backend" => {
                once(seen, 11)?;
                peer.backend = self.optional(Self::backend)?;
            }
            "ai_provider" => {
                once(seen, 12)?;
                peer.ai_provider = self.optional(Self::string)?;
            }
            _ => self.skip(2)?,
        }
        Some(())
    }

    fn backend(&mut self) -> Option<LineBackend> {
        let (mut seen, mut ip, mut port) = (0, None, None);
        self.object(|scan, key| {
            match key {
                "ip" => {
                    once(&mut seen, 0)?;
                    ip = Some(scan.string()?.parse().ok()?);
                }
                "port" => {
                    once(&mut seen, 1)?;
                    port = Some(u16::try_from(scan.unsigned()?).ok()?);
                }
                _ => scan.skip(3)?,
            }
            Some(())
        })?;
        Some(LineBackend { ip: ip?, port: port? })
    }

    fn workload(&mut self) -> Option<LineWorkload<'a>> {
        let (mut seen, mut kind, mut name) = (0, None, None);
        self.object(|scan, key| {
            match key {
                "kind" => {
                    once(&mut seen, 0)?;
                    kind = Some(scan.string()?);
                }
                "name" => {
                    once(&mut seen, 1)?;
                    name = Some(scan.string()?);
                }
                _ => scan.skip(3)?,
            }
            Some(())
        })?;
        Some(LineWorkload { kind: kind?, name: name? })
    }

    /// An object of strings, kept as its text.
    fn labels(&mut self) -> Option<RawLabels<'a>> {
        self.ws();
        let start = self.at;
        self.object(|scan, _| scan.string_span().map(drop))?;
        Some(RawLabels::new(self.text.get(start..self.at)?))
    }

    fn service(&mut self) -> Option<LineService<'a>> {
        if self.peek()? == b'"' {
            return self.string().map(LineService::Name);
        }
        let (mut seen, mut namespace, mut name) = (0, None, None);
        self.object(|scan, key| {
            match key {
                "namespace" => {
                    once(&mut seen, 0)?;
                    namespace = Some(scan.string()?);
                }
                "name" => {
                    once(&mut seen, 1)?;
                    name = Some(scan.string()?);
                }
                _ => scan.skip(3)?,
            }
            Some(())
        })?;
        Some(LineService::Object { namespace: namespace?, name: name? })
    }

    fn dns(&mut self) -> Option<LineDns<'a>> {
        let (mut seen, mut names) = (0, Vec::new());
        self.object(|scan, key| {
            match key {
                "names" => {
                    once(&mut seen, 0)?;
                    scan.array(|scan| scan.string().map(|name| names.push(name)))?;
                }
                _ => scan.skip(3)?,
            }
            Some(())
        })?;
        Some(LineDns { names })
    }

    /// A member of a record it does not keep. An object or array with
    /// the text the same key had last is not validated again.
    fn skip_member(&mut self, key: &str) -> Option<()> {
        self.ws();
        let from = self.at;
        if !matches!(self.bytes.get(from), Some(b'{' | b'[')) {
            return self.skip(1);
        }
        if let Some(len) = self.memo.skipped_matches(key, &self.bytes[from..]) {
            self.at += len;
            self.memo.recalled += 1;
            return Some(());
        }
        self.skip(1)?;
        self.memo.remember_skipped(key, &self.bytes[from..self.at]);
        Some(())
    }

    /// A verdict; the text the edge's last one had is taken from the memo.
    fn verdict(&mut self, edge: Option<(IpAddr, IpAddr, Option<u16>)>) -> Option<LineVerdict<'a>> {
        self.ws();
        let from = self.at;
        let known = edge.and_then(|edge| self.memo.verdicts.get(&edge));
        if let Some(known) = known.filter(|known| known.matches(&self.bytes[from..])) {
            self.at += known.len();
            self.memo.recalled += 1;
            return Some(known.recall(self.text, from));
        }
        let verdict = self.verdict_object()?;
        if let Some((edge, known)) = edge.zip(memo::remember(&verdict, self.text, from, self.at)) {
            memo::bounded_insert(&mut self.memo.verdicts, edge, known);
        }
        Some(verdict)
    }

    fn verdict_object(&mut self) -> Option<LineVerdict<'a>> {
        let (mut seen, mut verdict, mut policies) = (0, None, RawPolicies::default());
        self.object(|scan, key| {
            match key {
                "verdict" => {
                    once(&mut seen, 0)?;
                    verdict = Some(scan.string()?);
                }
                "policies" => {
                    once(&mut seen, 1)?;
                    scan.ws();
                    let start = scan.at;
                    scan.array(|scan| scan.policy().map(drop))?;
                    policies = RawPolicies::new(scan.text.get(start..scan.at)?);
                }
                _ => scan.skip(2)?,
            }
            Some(())
        })?;
        Some(LineVerdict { verdict: verdict?, policies })
    }

    fn policy(&mut self) -> Option<LinePolicy<'a>> {
        let (mut seen, mut namespace, mut name, mut resource_version) = (0, None, None, None);
        self.object(|scan, key| {
            match key {
                "namespace" => {
                    once(&mut seen, 0)?;
                    namespace = Some(scan.string()?);
                }
                "name" => {
                    once(&mut seen, 1)?;
                    name = Some(scan.string()?);
                }
                "resourceVersion" => {
                    once(&mut seen, 2)?;
                    resource_version = scan.optional(Self::string)?;
                }
                _ => scan.skip(4)?,
            }
            Some(())
        })?;
        Some(LinePolicy { namespace: namespace?, name: name?, resource_version })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::governance::memo::Strings;

    /// A line as the daemon writes it (fields the reader does not keep included).
    const DAEMON: &str = r#"{"time":"2026-01-01T00:00:09.000Z","event":"end","node":"node-a","protocol":"tcp","family":"ipv4","src":{"ip":"198.18.0.10","port":40000,"kind":"pod","namespace":"shop","pod":"web-1","uid":"u-web","node":"node-a","workload":{"kind":"Deployment","name":"web"},"labels":{"app":"web","app.kubernetes.io/name":"web"}},"dst":{"ip":"198.18.0.11","port":8080,"kind":"pod","namespace":"shop","pod":"api-1","uid":"u-api","labels":{"app":"api"},"service":{"namespace":"shop","name":"api"},"backend":{"ip":"198.18.0.12","port":9090,"via":"conntrack"},"dns":{"names":["api.shop.svc.cluster.local"],"source":"answer"},"ai_provider":"openai","ai_kind":"api","ai_via":"dns"},"local":"src","cgroup":{"id":1,"path":null},"state":"closed","to_dst":{"packets":3,"bytes":10},"to_src":{"packets":3,"bytes":20},"tcp_flags":{"to_dst":["SYN","ACK"],"to_src":["SYN","ACK"]},"first_seen":"2026-01-01T00:00:01.000Z","last_seen":"2026-01-01T00:00:08.000Z","duration_ms":1.5e3,"verdict":{"verdict":"allowed","reason":"allowed by shop/api","delivery":"delivered","policies":[{"namespace":"shop","name":"api","resourceVersion":"7","tier":null}]}}"#;

    fn serde(text: &str) -> Option<FlowLine<'_>> {
        serde_json::from_str::<FlowLine<'_>>(text).ok()
    }

    /// A line read by a scanner that has read nothing before.
    fn line(bytes: &[u8]) -> Option<FlowLine<'_>> {
        Scanner::default().line(bytes)
    }

    /// Whether every string of `peer` lies in `text`.
    fn borrowed_from(peer: &LinePeer<'_>, text: &str) -> bool {
        let range = text.as_bytes().as_ptr_range();
        let mut inside = true;
        peer.map_strings(&mut |string| {
            inside &= string.is_empty() || range.contains(&string.as_ptr());
            ""
        });
        inside
    }

    #[test]
    fn text_read_before_is_recalled_from_the_new_line_and_changed_text_is_read_again() {
        let mut scanner = Scanner::default();
        let first = scanner.line(DAEMON.as_bytes()).expect("first");
        assert_eq!(Some(&first), serde(DAEMON).as_ref());
        // Another record of the same ends: other ports, times and traffic.
        let again =
            DAEMON.replace("40000", "40001").replace(":08.000Z", ":09.000Z").replace(r#""bytes":20"#, r#""bytes":21"#);
        let second = scanner.line(again.as_bytes()).expect("second");
        assert_eq!(Some(&second), serde(&again).as_ref());
        // Both ends, the verdict, and the `cgroup` and `tcp_flags` objects skipped.
        assert_eq!((scanner.memo.recalled, scanner.memo.ends.len(), second.src.port), (5, 2, Some(40001)));
        assert!(borrowed_from(&second.src, &again) && borrowed_from(&second.dst, &again), "recalled from the new line");
        assert_eq!(
            second.verdict.as_ref().map(|v| v.policies.text().as_ptr()),
            again.find(r#"[{"namespace":"shop""#).map(|at| again[at..].as_ptr())
        );
        // The same addresses with other text after them, and another verdict.
        for (from, to) in [
            (r#""labels":{"app":"web","#, r#""labels":{"app":"web2","#),
            (r#""workload":{"kind":"Deployment","name":"web"}"#, r#""workload":null"#),
            (r#""names":["api.shop.svc.cluster.local"]"#, r#""names":["a.example.com","b.example.com"]"#),
            (r#""verdict":"allowed""#, r#""verdict":"denied-attempt""#),
            (r#""tcp_flags":{"to_dst":["SYN","ACK"]"#, r#""tcp_flags":{"to_dst":["SYN"]"#),
            (r#""pod":"api-1""#, r#""pod":"api-\u0031""#),
            (r#""port":40001,"#, ""),
        ] {
            let text = again.replacen(from, to, 1);
            assert_ne!(text, again, "{from}");
            assert_eq!(scanner.line(text.as_bytes()), serde(&text), "{to}");
            assert_eq!(scanner.line(again.as_bytes()), serde(&again), "{to}, then the old text again");
        }
        // An end without a port is remembered apart from one with a port
        // (the loop's last line remembered both).
        let portless = again.replacen(r#""port":40001,"#, "", 1);
        let recalled = scanner.memo.recalled;
        assert_eq!(scanner.line(portless.as_bytes()), serde(&portless));
        assert_eq!(scanner.line(again.as_bytes()), serde(&again));
        assert_eq!((scanner.memo.recalled, scanner.memo.ends.len()), (recalled + 10, 3));
        // A port after the other fields (keys in another order) is part of
        // the remembered text: another port is other text, the same port
        // the same value.
        let late_port = again.replacen(r#""port":40001,"kind":"pod","#, r#""kind":"pod","port":40001,"#, 1);
        assert_ne!(late_port, again);
        for port in ["40001", "40002", "40002"] {
            let text = late_port.replacen("40001", port, 1);
            assert_eq!(scanner.line(text.as_bytes()), serde(&text), "{port}");
        }
    }

    #[test]
    fn special_finds_the_first_quote_backslash_or_control_byte() {
        let naive = |bytes: &[u8; 8]| bytes.iter().position(|b| matches!(b, b'"' | b'\\' | 0..=0x1f));
        let fillers = [b'a', b' ', 0x7f, 0x80, 0xc3, 0xff, b'!', b'#', b'[', b']'];
        let specials = [b'"', b'\\', 0, 0x1f, b'\n'];
        for filler in fillers {
            assert_eq!(special(u64::from_le_bytes([filler; 8])), None, "{filler:#x}");
            for first in 0..8 {
                for special_byte in specials {
                    for later in specials {
                        let mut bytes = [filler; 8];
                        bytes[first] = special_byte;
                        // Borrows from a match may mark the bytes above it; the first stays exact.
                        bytes[7] = if first < 7 { later } else { special_byte };
                        assert_eq!(special(u64::from_le_bytes(bytes)), naive(&bytes), "{bytes:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn special_from_finds_the_first_special_byte_at_any_length_and_place() {
        let naive =
            |bytes: &[u8]| bytes.iter().position(|b| matches!(b, b'"' | b'\\' | 0..=0x1f)).unwrap_or(bytes.len());
        for len in 0..48 {
            for filler in [b'a', 0x7f, 0x80, 0xff, b' '] {
                let mut bytes = vec![filler; len];
                assert_eq!(special_from(&bytes), len);
                for first in 0..len {
                    for special_byte in [b'"', b'\\', 0, 0x1f] {
                        bytes.fill(filler);
                        bytes[first] = special_byte;
                        bytes[len - 1] = if first < len - 1 { b'"' } else { special_byte };
                        assert_eq!(special_from(&bytes), naive(&bytes), "{bytes:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_daemon_line_is_read_as_serde_reads_it() {
        let fast = line(DAEMON.as_bytes()).expect("the scanner reads daemon lines");
        assert_eq!(Some(&fast), serde(DAEMON).as_ref());
        assert_eq!(fast.src.labels.to_map().get("app.kubernetes.io/name").map(String::as_str), Some("web"));
        assert!(matches!(fast.event, Cow::Borrowed("end")), "unescaped strings are borrowed");
        assert_eq!(fast.dst.ai_provider.as_deref(), Some("openai"));
        assert_eq!(fast.verdict.as_ref().map(|v| v.policies.to_vec().len()), Some(1));
    }

    #[test]
    fn escapes_nulls_and_old_shapes_read_as_serde_reads_them() {
        for (from, to) in [
            (r#""pod":"web-1""#, r#""pod":"w\u0065b-\"1\"""#),
            (r#""service":{"namespace":"shop","name":"api"}"#, r#""service":"api""#),
            (r#""service":{"namespace":"shop","name":"api"}"#, r#""service":null"#),
            (r#""port":40000"#, r#""port":null"#),
            (r#""verdict":{"verdict""#, r#""verdict":null,"v":{"verdict""#),
            (r#""labels":{"app":"api"}"#, r#""labels":{}"#),
            (r#""event":"end""#, " \"event\" :\t\"end\" "),
        ] {
            let text = DAEMON.replacen(from, to, 1);
            assert_ne!(text, DAEMON, "{from}");
            let fast = line(text.as_bytes()).unwrap_or_else(|| panic!("scanner refused {to}"));
            assert_eq!(Some(fast), serde(&text), "{to}");
        }
    }

    #[test]
    fn what_serde_refuses_the_scanner_refuses() {
        for (from, to) in [
            (r#""port":40000"#, r#""port":65536"#),
            (r#""port":40000"#, r#""port":4e4"#),
            (r#""port":40000"#, r#""port":040000"#),
            (r#""event":"end""#, r#""event":"end","event":"start""#),
            (r#""labels":{"app":"api"}"#, r#""labels":null"#),
            (r#""labels":{"app":"api"}"#, r#""labels":{"app":1}"#),
            (r#""ip":"198.18.0.11""#, r#""ip":"198.18.0.300""#),
            (r#""pod":"web-1""#, "\"pod\":\"web\u{1}\""),
            (r#""pod":"web-1""#, r#""pod":"\ud800""#),
            (r#""pod":"web-1""#, "\"pod\":\"web\t1\""),
            (r#""duration_ms":1.5e3"#, r#""duration_ms":1.e3"#),
            (r#""packets":3"#, r#""packets":-3"#),
            (r#""names":["#, r#""names":null,"x":["#),
        ] {
            let text = DAEMON.replacen(from, to, 1);
            assert_ne!(text, DAEMON, "{from}");
            assert_eq!(serde(&text), None, "serde reads {to}");
            assert_eq!(line(text.as_bytes()), None, "the scanner reads {to}");
        }
        assert_eq!(line(format!("{DAEMON} x").as_bytes()), None, "trailing characters");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Whatever the scanner reads from a damaged line, serde reads the same.
        #[test]
        fn the_scanner_never_reads_what_serde_would_not(
            edits in proptest::collection::vec((0..DAEMON.len(), 0_u8..4, proptest::sample::select(
                vec![b'"', b'\\', b'{', b'}', b'[', b']', b':', b',', b'0', b'9', b'-', b'.', b'e', b'n', b' ', b'a', 0x01, 0xc3])), 1..4),
            late_ports in any::<bool>(),
        ) {
            // The daemon's order, or each end's port after its kind (as a log whose keys were sorted).
            let seed = if late_ports {
                DAEMON.replace(r#""port":40000,"kind":"pod","#, r#""kind":"pod","port":40000,"#)
                    .replace(r#""port":8080,"kind":"pod","#, r#""kind":"pod","port":8080,"#)
            } else {
                DAEMON.to_owned()
            };
            let mut bytes = seed.as_bytes().to_vec();
            for (at, op, byte) in edits {
                let at = at.min(bytes.len().saturating_sub(1));
                match op {
                    0 => { bytes.remove(at); }
                    1 => bytes.insert(at, byte),
                    _ => bytes[at] = byte,
                }
            }
            if let Some(fast) = line(&bytes) {
                let slow = serde_json::from_slice::<FlowLine<'_>>(&bytes);
                prop_assert_eq!(Some(fast), slow.ok());
            }
            // The same after the undamaged line: what the memo recalls is what reading gives.
            let mut scanner = Scanner::default();
            prop_assert!(scanner.line(seed.as_bytes()).is_some());
            let slow = serde_json::from_slice::<FlowLine<'_>>(&bytes).ok();
            match scanner.line(&bytes) {
                Some(fast) => prop_assert_eq!(Some(fast), slow),
                None => prop_assert_eq!(line(&bytes), None, "the memo refused what reading takes"),
            }
        }
    }
}
