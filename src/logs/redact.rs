//! Streaming secret masking: bytes in, masked bytes out, for any write sizes.
//!
//! Call order: [`RedactorBuilder::new`], then [`RedactorBuilder::secret`] for
//! each secret (it adds the value's encoded forms too) and read
//! [`RedactorBuilder::warnings`]; [`RedactorBuilder::build`] gives an
//! immutable, shareable [`Matcher`]; [`Redactor::new`] makes one stream from
//! it; call [`Redactor::write`] for each piece of input, then
//! [`Redactor::flush`] once at end of stream. For one whole text (a line
//! liftoff writes itself) [`mask_text`] / [`mask_str`] do all of that.
//!
//! What is masked: every byte covered by an occurrence of any pattern is
//! masked, and each maximal run of masked bytes becomes one `***` (so
//! overlapping, self-overlapping and adjacent secrets are all covered). The
//! result is the same as a whole-text replacement (`reference_mask`), whatever
//! the write split.
//!
//! The algorithm (one pass, no automaton): with grams of `k` bytes (8 when
//! every pattern is at least 11 bytes long, else 4) every pattern is at least
//! `stride + k - 1` bytes long (`stride` = shortest pattern - k + 1, at most
//! 16), so every occurrence covers a gram starting at a multiple of `stride`
//! in the scanned buffer. The scan tests only those grams, four per round,
//! against a blocked Bloom filter (two multiplies, one word load and a mask
//! test each; it holds each pattern's grams at offsets `0..stride`, sized to
//! the pattern count so it stays in cache), and only on a hit looks the gram
//! up and compares the candidate patterns. Throughput is therefore nearly
//! independent of the number of secrets. Across writes the redactor keeps
//! back exactly the longest suffix of the input that is a proper prefix of
//! some pattern (a partial match still alive; found by testing the last
//! positions within reach of the short patterns one by one, and further
//! back, where only a long pattern can be live, from the tested grams),
//! everything before it is final and is
//! emitted. Large writes are scanned in place; only the seam with the held
//! bytes is copied. Buildkite's redactor holds back the same way; an
//! Aho-Corasick automaton was the alternative, but its per-byte state walk
//! slows with the pattern count, which the bench target (1,000 secrets no more
//! than 2x slower than 1) rules out. The cost of this choice: on adversarial
//! output (a highly repetitive secret, such as `aaaa…`, inside a long run of
//! the same byte) every tested gram has candidates to compare, which is slower
//! (still linear in the output for a fixed secret set).
//!
//! A secret matches whole, never by a part of it: a PEM key, a certificate
//! or a JSON document is held back up to its full length while a print of
//! it may be under way (a few KiB). Masking long secrets as overlapping
//! pieces, as this module once did, masked any text that happened to hold
//! one piece: a 3,001-byte `aaa…ab` secret masked every run of 128 `a`, and
//! the first 128 bytes of a JSON secret (its common keys) masked a public
//! line. Only forms longer than [`LONG_SECRET`] (64 KiB, which would hold
//! back too much) are still masked in pieces of [`PIECE`] bytes, with a
//! warning. On a hit the candidate's last bytes are compared before the
//! rest, so a long repetitive secret (`aaa…ab`) against repetitive output
//! (`aaaa…`) costs a few bytes per candidate, not its length.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// What a masked run is replaced with.
pub const MASK: &[u8] = b"***";

/// Values shorter than this are not masked: they would shred the log.
pub const MIN_SECRET_LEN: usize = 4;

/// Secret forms up to this long are matched whole; longer ones (which would
/// make every stream hold back that much) are masked as overlapping pieces
/// of [`PIECE`] bytes, with a warning (see [`RedactorBuilder::secret`]).
pub const LONG_SECRET: usize = 64 * 1024;
/// The piece of a form longer than [`LONG_SECRET`].
pub const PIECE: usize = 4096;

/// Collects secrets and their encoded forms.
#[derive(Debug, Default, Clone)]
pub struct RedactorBuilder {
    patterns: Vec<Vec<u8>>,
    warnings: Vec<String>,
    warned: HashSet<String>,
}

impl RedactorBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Masks `value` (the value of the variable or secret called `name`) and
    /// its common encoded forms (see [`variants`]): JSON-string-escaped,
    /// URL-encoded (fully, `quote()`-style, `quote_plus()`-style and
    /// `encodeURIComponent`-style, upper and lower hex), base64 at all three
    /// alignments (standard and URL-safe alphabets), and for multi-line
    /// values each line break as `\n` or as `\r\n`. Each form matches whole.
    /// A value shorter than 4 bytes is not masked; one warning per `name`
    /// says so. Forms longer than [`LONG_SECRET`] are masked as overlapping
    /// [`PIECE`]-byte pieces; one warning per `name` says so.
    pub fn secret(&mut self, name: &str, value: &[u8]) -> &mut Self {
        if value.is_empty() {
            return self;
        }
        if value.len() < MIN_SECRET_LEN {
            if self.warned.insert(name.to_string()) {
                self.warnings.push(format!(
                    "the value of {name} is shorter than {MIN_SECRET_LEN} bytes and is not masked in run logs (masking it would shred the log); use a longer secret"
                ));
            }
            return self;
        }
        for v in variants(value) {
            if v.len() <= LONG_SECRET {
                self.patterns.push(v);
                continue;
            }
            // A huge form would make every stream hold back that much: it is
            // masked as overlapping pieces (any print of it contains them
            // all), at the cost that output repeating a piece is masked too.
            if self.warned.insert(format!("{name}\0long")) {
                self.warnings.push(format!(
                    "the value of {name} (or an encoded form of it) is longer than {} KiB: it is masked in run logs as pieces of {} KiB, so other output repeating such a piece is masked too; use a shorter secret (a file, a reference)",
                    LONG_SECRET >> 10,
                    PIECE >> 10
                ));
            }
            let mut start = 0;
            while start + PIECE < v.len() {
                self.patterns.push(v[start..start + PIECE].to_vec());
                start += PIECE / 2;
            }
            self.patterns.push(v[v.len() - PIECE..].to_vec());
        }
        self
    }

    /// Masks exactly these bytes, no encoded forms (patterns shorter than 4
    /// bytes are ignored). Tests and callers with their own encodings use it.
    pub fn literal(&mut self, bytes: &[u8]) -> &mut Self {
        if bytes.len() >= MIN_SECRET_LEN {
            self.patterns.push(bytes.to_vec());
        }
        self
    }

    /// One line per variable whose value was too short to mask.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The patterns collected so far (deduplicated by `build`).
    pub fn patterns(&self) -> &[Vec<u8>] {
        &self.patterns
    }

    pub fn build(&self) -> Arc<Matcher> {
        Arc::new(Matcher::new(&self.patterns))
    }
}

/// The byte strings that mask `value`: the value itself and its encoded forms,
/// each at least [`MIN_SECRET_LEN`] long, deduplicated.
pub fn variants(value: &[u8]) -> Vec<Vec<u8>> {
    let mut bases = Vec::new();
    let lf = normalise_newlines(value);
    if lf.contains(&b'\n') {
        let crlf = to_crlf(&lf);
        bases.push(lf);
        bases.push(crlf);
    } else {
        bases.push(value.to_vec());
    }
    let mut out: Vec<Vec<u8>> = Vec::new();
    for base in &bases {
        out.push(base.clone());
        if let Ok(text) = std::str::from_utf8(base) {
            if let Ok(json) = serde_json::to_string(text) {
                let inner = &json.as_bytes()[1..json.len() - 1];
                out.push(inner.to_vec());
            }
        }
        for hex in [b"0123456789ABCDEF", b"0123456789abcdef"] {
            for style in &URL_STYLES {
                out.push(url_encode(base, hex, style));
            }
        }
        for align in 0..3 {
            out.push(base64_aligned(
                &base64::engine::general_purpose::STANDARD_NO_PAD,
                base,
                align,
            ));
            out.push(base64_aligned(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                base,
                align,
            ));
        }
    }
    let mut seen = HashSet::new();
    out.retain(|p| p.len() >= MIN_SECRET_LEN && seen.insert(p.clone()));
    out
}

fn normalise_newlines(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut i = 0;
    while i < value.len() {
        if value[i] == b'\r' && value.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(value[i]);
        i += 1;
    }
    out
}

fn to_crlf(lf: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lf.len() + 8);
    for &b in lf {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// A way of percent-encoding: the bytes besides ASCII letters and digits
/// kept as they are, and whether a space becomes `+`.
struct UrlStyle {
    keep: &'static [u8],
    plus: bool,
}

/// The percent-encodings in common use: RFC 3986 unreserved only (Go's
/// `url.PathEscape` of a segment, `curl --data-urlencode`, Python's
/// `quote(s, safe="")`); Python's `quote()` (keeps `/`);
/// `quote_plus()`/`urlencode()` and HTML forms (a space is `+`);
/// JavaScript's `encodeURIComponent` (keeps `!'()*`).
const URL_STYLES: [UrlStyle; 4] = [
    UrlStyle {
        keep: b"-._~",
        plus: false,
    },
    UrlStyle {
        keep: b"-._~/",
        plus: false,
    },
    UrlStyle {
        keep: b"-._~",
        plus: true,
    },
    UrlStyle {
        keep: b"-._~!'()*",
        plus: false,
    },
];

fn url_encode(value: &[u8], hex: &[u8; 16], style: &UrlStyle) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() * 3);
    for &b in value {
        if b.is_ascii_alphanumeric() || style.keep.contains(&b) {
            out.push(b);
        } else if b == b' ' && style.plus {
            out.push(b'+');
        } else {
            out.push(b'%');
            out.push(hex[usize::from(b >> 4)]);
            out.push(hex[usize::from(b & 15)]);
        }
    }
    out
}

/// The base64 characters that depend only on `value`'s bytes when `value`
/// starts `align` bytes into a 3-byte group of some longer encoded stream.
fn base64_aligned(engine: &impl base64::Engine, value: &[u8], align: usize) -> Vec<u8> {
    let mut input = vec![0u8; align];
    input.extend_from_slice(value);
    let encoded = engine.encode(&input);
    let first = (8 * align).div_ceil(6);
    let end = (8 * (align + value.len())) / 6;
    if first >= end {
        return Vec::new();
    }
    encoded.as_bytes()[first..end].to_vec()
}

/// `text` masked whole with `matcher` (for liftoff's own lines: a failure
/// reason, an error, a log line of the launcher).
pub fn mask_text(matcher: &Arc<Matcher>, text: &[u8]) -> Vec<u8> {
    let mut r = Redactor::new(matcher.clone());
    let mut out = Vec::with_capacity(text.len());
    r.write(text, &mut out);
    r.flush(&mut out);
    out
}

/// [`mask_text`] of a string.
pub fn mask_str(matcher: &Arc<Matcher>, text: &str) -> String {
    String::from_utf8_lossy(&mask_text(matcher, text.as_bytes())).into_owned()
}

/// The whole-text meaning of masking, used by tests as the reference: every
/// byte covered by an occurrence of a pattern is masked, and each maximal run
/// of masked bytes becomes [`MASK`].
pub fn reference_mask(text: &[u8], patterns: &[Vec<u8>]) -> Vec<u8> {
    let mut masked = vec![false; text.len()];
    for p in patterns.iter().filter(|p| p.len() >= MIN_SECRET_LEN) {
        if p.len() > text.len() {
            continue;
        }
        for i in 0..=text.len() - p.len() {
            if &text[i..i + p.len()] == p.as_slice() {
                masked[i..i + p.len()].iter_mut().for_each(|m| *m = true);
            }
        }
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if masked[i] {
            out.extend_from_slice(MASK);
            while i < text.len() && masked[i] {
                i += 1;
            }
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    out
}

/// The compiled pattern set: shareable between streams, immutable.
#[derive(Debug)]
pub struct Matcher {
    patterns: Vec<Box<[u8]>>,
    /// A blocked Bloom filter over each pattern's grams at offsets
    /// `0..stride`: one hash picks a 64-bit word, another two bits in it, so a
    /// test is one memory access.
    bloom: Vec<u64>,
    /// Shift that turns the first hash into a word index.
    shift: u32,
    /// The same over each pattern's first 4 bytes (partial matches).
    start_bloom: Vec<u64>,
    start_shift: u32,
    /// Gram length: 8 bytes when every pattern is at least 11 long, else 4.
    gram_len: usize,
    /// The scan tests one gram every `stride` bytes: every pattern is at
    /// least `stride + gram_len - 1` bytes long, so each occurrence holds one
    /// tested gram.
    stride: usize,
    /// Gram -> (pattern, offset of the gram in the pattern).
    grams: HashMap<u64, Box<[(u32, u32)]>, GramHash>,
    /// First 4 bytes -> patterns starting with them (partial matches).
    starts: HashMap<u32, Box<[u32]>, GramHash>,
    /// Prefixes of 1, 2 and 3 bytes, for partial matches at the very end.
    prefix1: [u64; 4],
    prefix2: Vec<u64>,
    prefix3: HashSet<u32, GramHash>,
    max_len: usize,
    /// The longest pattern of at most [`SHORT_PATTERN`] bytes.
    short_max: usize,
}

/// Patterns longer than this (PEM keys, certificates, JSON documents) are
/// few; far from the end of the input, a live partial match of one is found
/// from the tested grams, not by trying every position.
const SHORT_PATTERN: usize = 256;

const GRAM_MUL: u64 = 0x9E37_79B9_7F4A_7C15;
/// The second hash: which two bits of the word.
const GRAM_MUL2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const MAX_STRIDE: usize = 32;
/// How many last bytes of a candidate pattern are compared first.
const TAIL_CHECK: usize = 8;

/// The Bloom filter word and bits of gram `g`.
#[inline(always)]
fn gram_bits(g: u64, shift: u32) -> (usize, u64) {
    let word = (g.wrapping_mul(GRAM_MUL) >> shift) as usize;
    let h = g.wrapping_mul(GRAM_MUL2);
    (word, (1u64 << (h >> 58)) | (1u64 << ((h >> 52) & 63)))
}

/// The `K`-byte gram (4 or 8) at `p[o..]`, as a number.
#[inline(always)]
fn gram<const K: usize>(p: &[u8], o: usize) -> u64 {
    if K == 8 {
        match <[u8; 8]>::try_from(&p[o..o + 8]) {
            Ok(a) => u64::from_le_bytes(a),
            Err(_) => 0,
        }
    } else {
        u64::from(u32::from_le_bytes([p[o], p[o + 1], p[o + 2], p[o + 3]]))
    }
}

fn gram4(p: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([p[o], p[o + 1], p[o + 2], p[o + 3]])
}

/// A blocked Bloom filter (one word per test) of `entries` items.
fn bloom_for(entries: usize) -> (Vec<u64>, u32) {
    // About 64 bits per item: few false hits, small enough for cache.
    let want = (entries.max(1) * 64).next_power_of_two();
    let bits = want.trailing_zeros().clamp(9, 21);
    (vec![0u64; 1usize << (bits - 6)], 64 - (bits - 6))
}

impl Matcher {
    fn new(raw: &[Vec<u8>]) -> Matcher {
        let mut seen = HashSet::new();
        let patterns: Vec<Box<[u8]>> = raw
            .iter()
            .filter(|p| p.len() >= MIN_SECRET_LEN && seen.insert(p.as_slice()))
            .map(|p| p.clone().into_boxed_slice())
            .collect();
        let min_len = patterns
            .iter()
            .map(|p| p.len())
            .min()
            .unwrap_or(MIN_SECRET_LEN);
        // 8-byte grams when every pattern allows a stride of 4 with them:
        // chance equality of a text gram with a pattern gram all but vanishes.
        let gram_len = if min_len >= 11 { 8 } else { 4 };
        let stride = (min_len + 1 - gram_len).clamp(1, MAX_STRIDE);
        let (mut bloom, shift) = bloom_for(patterns.len() * stride);
        let (mut start_bloom, start_shift) = bloom_for(patterns.len());
        let mut grams: HashMap<u64, Vec<(u32, u32)>, GramHash> = HashMap::default();
        let mut starts: HashMap<u32, Vec<u32>, GramHash> = HashMap::default();
        let mut prefix1 = [0u64; 4];
        let mut prefix2 = vec![0u64; 1024];
        let mut prefix3 = HashSet::default();
        let mut max_len = 0;
        let mut short_max = 0;
        for (id, p) in patterns.iter().enumerate() {
            let id = id as u32;
            for o in 0..stride {
                let g = if gram_len == 8 {
                    gram::<8>(p, o)
                } else {
                    gram::<4>(p, o)
                };
                let (word, mask) = gram_bits(g, shift);
                bloom[word] |= mask;
                grams.entry(g).or_default().push((id, o as u32));
            }
            let first = gram4(p, 0);
            let (word, mask) = gram_bits(u64::from(first), start_shift);
            start_bloom[word] |= mask;
            starts.entry(first).or_default().push(id);
            prefix1[usize::from(p[0] >> 6)] |= 1 << (p[0] & 63);
            let two = usize::from(u16::from_le_bytes([p[0], p[1]]));
            prefix2[two >> 6] |= 1 << (two & 63);
            prefix3.insert(u32::from_le_bytes([p[0], p[1], p[2], 0]));
            max_len = max_len.max(p.len());
            if p.len() <= SHORT_PATTERN {
                short_max = short_max.max(p.len());
            }
        }
        Matcher {
            patterns,
            bloom,
            shift,
            start_bloom,
            start_shift,
            gram_len,
            stride,
            grams: grams
                .into_iter()
                .map(|(k, v)| (k, v.into_boxed_slice()))
                .collect(),
            starts: starts
                .into_iter()
                .map(|(k, v)| (k, v.into_boxed_slice()))
                .collect(),
            prefix1,
            prefix2,
            prefix3,
            max_len,
            short_max,
        }
    }

    /// How many distinct patterns (secrets and their encoded forms).
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The longest pattern: the redactor holds back less than this.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    #[inline(always)]
    fn gram_hit(&self, g: u64) -> bool {
        let (word, mask) = gram_bits(g, self.shift);
        self.bloom.get(word).is_some_and(|w| w & mask == mask)
    }

    /// Verifies the patterns holding gram `g` at `buf[j..]`; full matches go
    /// to `spans`.
    #[inline(never)]
    fn verify(&self, buf: &[u8], j: usize, g: u64, spans: &mut Vec<(usize, usize)>) {
        let Some(cands) = self.grams.get(&g) else {
            return;
        };
        for &(id, o) in cands.iter() {
            let Some(t) = j.checked_sub(o as usize) else {
                continue;
            };
            let p = &self.patterns[id as usize];
            let Some(window) = buf.get(t..t + p.len()) else {
                continue;
            };
            // The last bytes first: a long repetitive secret against
            // repetitive output fails here, not after its whole length.
            let tail = p.len().saturating_sub(TAIL_CHECK);
            if window[tail..] == p[tail..] && window == &p[..] {
                spans.push((t, t + p.len()));
            }
        }
    }

    /// Is `buf[t..]` (running to the end) a proper prefix of some pattern?
    fn live_partial(&self, buf: &[u8], t: usize) -> bool {
        let rest = &buf[t..];
        match rest.len() {
            0 => false,
            1 => (self.prefix1[usize::from(rest[0] >> 6)] >> (rest[0] & 63)) & 1 != 0,
            2 => {
                let two = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
                (self.prefix2[two >> 6] >> (two & 63)) & 1 != 0
            }
            3 => self
                .prefix3
                .contains(&u32::from_le_bytes([rest[0], rest[1], rest[2], 0])),
            _ => {
                let g = gram4(rest, 0);
                let (word, mask) = gram_bits(u64::from(g), self.start_shift);
                if self.start_bloom.get(word).is_none_or(|w| w & mask != mask) {
                    return false;
                }
                self.starts.get(&g).is_some_and(|ids| {
                    ids.iter().any(|&id| {
                        let p = &self.patterns[id as usize];
                        p.len() > rest.len() && p[..rest.len()] == *rest
                    })
                })
            }
        }
    }

    /// Finds every occurrence in `buf` (pushed to `spans`, unordered) and
    /// returns where the longest live partial match starts (`buf.len()` when
    /// none, or when `at_end`).
    fn scan(&self, buf: &[u8], at_end: bool, spans: &mut Vec<(usize, usize)>) -> usize {
        if self.gram_len == 8 {
            self.scan_grams::<8>(buf, spans);
        } else {
            self.scan_grams::<4>(buf, spans);
        }
        let n = buf.len();
        if at_end {
            return n;
        }
        let from = n.saturating_sub(self.max_len.saturating_sub(1));
        // Before `near`, what runs to the end is at least as long as every
        // short pattern and holds a tested gram: only a long pattern can be
        // live there, found from the grams like a whole match.
        let reach = self.short_max.max(self.stride + self.gram_len - 1);
        let near = n.saturating_sub(reach.saturating_sub(1)).max(from);
        let far = if near > from {
            if self.gram_len == 8 {
                self.long_partial::<8>(buf, from, near)
            } else {
                self.long_partial::<4>(buf, from, near)
            }
        } else {
            None
        };
        far.or_else(|| (near..n).find(|&t| self.live_partial(buf, t)))
            .unwrap_or(n)
    }

    /// The first `t` in `from..near` where `buf[t..]` (running to the end,
    /// at least `stride + K - 1` bytes) is a proper prefix of a pattern:
    /// such a prefix holds a gram at a multiple of `stride` from `from`,
    /// at an offset below `stride` in the pattern, which the filter has.
    fn long_partial<const K: usize>(&self, buf: &[u8], from: usize, near: usize) -> Option<usize> {
        let n = buf.len();
        let mut best: Option<usize> = None;
        let mut j = from;
        while j < near + self.stride && j + K <= n {
            let g = gram::<K>(buf, j);
            if self.gram_hit(g) {
                if let Some(cands) = self.grams.get(&g) {
                    for &(id, o) in cands.iter() {
                        let Some(t) = j.checked_sub(o as usize) else {
                            continue;
                        };
                        if t < from || t >= near || best.is_some_and(|b| b <= t) {
                            continue;
                        }
                        let p = &self.patterns[id as usize];
                        if p.len() > n - t && p[..n - t] == buf[t..] {
                            best = Some(t);
                        }
                    }
                }
            }
            j += self.stride;
        }
        best
    }

    #[inline(always)]
    fn scan_grams<const K: usize>(&self, buf: &[u8], spans: &mut Vec<(usize, usize)>) {
        let n = buf.len();
        let stride = self.stride;
        let mut j = 0;
        // Four tested grams per round, independent, for instruction-level
        // parallelism.
        while j + 3 * stride + K <= n {
            let g0 = gram::<K>(buf, j);
            let g1 = gram::<K>(buf, j + stride);
            let g2 = gram::<K>(buf, j + 2 * stride);
            let g3 = gram::<K>(buf, j + 3 * stride);
            let (h0, h1, h2, h3) = (
                self.gram_hit(g0),
                self.gram_hit(g1),
                self.gram_hit(g2),
                self.gram_hit(g3),
            );
            if h0 | h1 | h2 | h3 {
                for (k, (hit, g)) in [(h0, g0), (h1, g1), (h2, g2), (h3, g3)]
                    .into_iter()
                    .enumerate()
                {
                    if hit {
                        self.verify(buf, j + k * stride, g, spans);
                    }
                }
            }
            j += 4 * stride;
        }
        while j + K <= n {
            let g = gram::<K>(buf, j);
            if self.gram_hit(g) {
                self.verify(buf, j, g, spans);
            }
            j += stride;
        }
    }
}

/// Sorts masked spans by start and merges overlapping or touching ones.
fn merge_spans(spans: &mut Vec<(usize, usize)>) {
    if spans.len() < 2 {
        return;
    }
    spans.sort_unstable();
    let mut w = 0;
    for r in 1..spans.len() {
        let (s, e) = spans[r];
        if s <= spans[w].1 {
            spans[w].1 = spans[w].1.max(e);
        } else {
            w += 1;
            spans[w] = (s, e);
        }
    }
    spans.truncate(w + 1);
}

/// A multiply-shift hasher for the 4-byte gram keys.
#[derive(Debug, Default, Clone, Copy)]
struct GramHash;

impl std::hash::BuildHasher for GramHash {
    type Hasher = GramHasher;
    fn build_hasher(&self) -> GramHasher {
        GramHasher(0)
    }
}

#[derive(Debug, Default)]
struct GramHasher(u64);

impl std::hash::Hasher for GramHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 ^= self.0 >> 29;
    }
    fn write_u32(&mut self, v: u32) {
        self.0 = (u64::from(v) ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// One stream's masking state.
#[derive(Debug)]
pub struct Redactor {
    matcher: Arc<Matcher>,
    /// Input not yet final: the longest live partial match.
    pending: Vec<u8>,
    /// The first `carry` bytes of `pending` are inside a masked run whose
    /// `***` was already written.
    carry: usize,
    /// The output ends with a `***` whose run reaches the start of `pending`
    /// (a run starting there continues it).
    ends_masked: bool,
    spans: Vec<(usize, usize)>,
}

impl Redactor {
    pub fn new(matcher: Arc<Matcher>) -> Redactor {
        Redactor {
            pending: Vec::with_capacity(matcher.max_len * 2 + 64),
            matcher,
            carry: 0,
            ends_masked: false,
            spans: Vec::new(),
        }
    }

    /// How many input bytes are held back (never more than the longest
    /// pattern minus one).
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    /// Bytes of memory the redactor's own buffers hold (allocated).
    pub fn buffered(&self) -> usize {
        self.pending.capacity() + self.spans.capacity() * std::mem::size_of::<(usize, usize)>()
    }

    /// Masks `data`, appending what is final to `out`.
    pub fn write(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.matcher.is_empty() {
            out.extend_from_slice(data);
            return;
        }
        if data.len() >= 2 * self.matcher.max_len {
            // Large write: scan it in place rather than copying it behind
            // what is held back.
            self.step(data, false, out);
        } else {
            self.pending.extend_from_slice(data);
            self.step(&[], false, out);
        }
    }

    /// End of stream: appends everything still held back, masked.
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        if self.matcher.is_empty() {
            return;
        }
        self.step(&[], true, out);
        self.carry = 0;
        self.ends_masked = false;
    }

    /// Masks the input `pending ++ data` (`data` is empty, or at least twice
    /// the longest pattern, so a live partial match lies within it).
    fn step(&mut self, data: &[u8], at_end: bool, out: &mut Vec<u8>) {
        self.spans.clear();
        if self.ends_masked {
            // The run already announced continues over `carry` bytes; a match
            // starting at or before its end joins it.
            self.spans.push((0, self.carry));
        }
        let p = self.pending.len();
        let release = if data.is_empty() {
            self.matcher.scan(&self.pending, at_end, &mut self.spans)
        } else {
            // Occurrences starting in `pending` end within the first
            // `max_len` bytes of `data`: scan that seam on its own.
            if p > 0 {
                let seam_end = data.len().min(self.matcher.max_len);
                self.pending.extend_from_slice(&data[..seam_end]);
                self.matcher.scan(&self.pending, true, &mut self.spans);
                self.pending.truncate(p);
            }
            let first = self.spans.len();
            let r = self.matcher.scan(data, at_end, &mut self.spans);
            for span in &mut self.spans[first..] {
                span.0 += p;
                span.1 += p;
            }
            p + r
        };
        merge_spans(&mut self.spans);
        let (head, tail) = (&self.pending[..], data);
        let emit = |from: usize, to: usize, out: &mut Vec<u8>| {
            if from < p {
                out.extend_from_slice(&head[from..to.min(p)]);
            }
            if to > p {
                out.extend_from_slice(&tail[from.max(p) - p..to - p]);
            }
        };
        let mut cursor = 0;
        // When nothing is released these stay: the announced run goes on.
        let mut ends_masked = self.ends_masked;
        let mut carry = match self.spans.first() {
            Some(&(_, e)) if self.ends_masked => e,
            _ => 0,
        };
        for (n, &(s, e)) in self.spans.iter().enumerate() {
            if s >= release {
                break;
            }
            emit(cursor, s, out);
            let continues = n == 0 && self.ends_masked;
            if !continues {
                out.extend_from_slice(MASK);
            }
            if e >= release {
                cursor = release;
                ends_masked = true;
                carry = e - release;
                break;
            }
            cursor = e;
            ends_masked = false;
        }
        if cursor < release {
            emit(cursor, release, out);
            ends_masked = false;
            carry = 0;
        }
        self.ends_masked = ends_masked;
        self.carry = carry;
        if release <= p {
            self.pending.drain(..release);
            self.pending.extend_from_slice(data);
        } else {
            self.pending.clear();
            self.pending.extend_from_slice(&data[release - p..]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn run(patterns: &[&[u8]], pieces: &[&[u8]]) -> Vec<u8> {
        let mut b = RedactorBuilder::new();
        for p in patterns {
            b.literal(p);
        }
        let mut r = Redactor::new(b.build());
        let mut out = Vec::new();
        for p in pieces {
            r.write(p, &mut out);
        }
        r.flush(&mut out);
        out
    }

    #[test]
    fn plain_and_split() {
        assert_eq!(run(&[b"hunter22"], &[b"pw=hunter22!"]), b"pw=***!");
        assert_eq!(
            run(&[b"hunter22"], &[b"pw=hun", b"ter", b"22!"]),
            b"pw=***!"
        );
    }

    #[test]
    fn one_byte_writes() {
        let text = b"a hunter22 b hunter22hunter22 c";
        let pieces: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(run(&[b"hunter22"], &pieces), b"a *** b *** c");
    }

    #[test]
    fn secret_at_end_of_stream() {
        assert_eq!(run(&[b"s3cret"], &[b"x s3c", b"ret"]), b"x ***");
        assert_eq!(run(&[b"s3cret"], &[b"x s3cre"]), b"x s3cre");
    }

    #[test]
    fn prefixes_of_each_other() {
        assert_eq!(run(&[b"abcd", b"abcdef"], &[b"xabcdefx"]), b"x***x");
        assert_eq!(run(&[b"abcd", b"abcdef"], &[b"xabcdex"]), b"x***ex");
        assert_eq!(
            run(&[b"abcdef", b"abcd"], &[b"xab", b"cde", b"x"]),
            b"x***ex"
        );
    }

    #[test]
    fn self_overlapping() {
        assert_eq!(run(&[b"aaab"], &[b"aaaab"]), b"a***");
        assert_eq!(run(&[b"abab"], &[b"ababab"]), b"***");
        assert_eq!(run(&[b"aaaa"], &[b"aa", b"a", b"aaa", b"b"]), b"***b");
    }

    #[test]
    fn held_back_is_the_live_partial() {
        let mut b = RedactorBuilder::new();
        b.literal(b"abcdef");
        let mut r = Redactor::new(b.build());
        let mut out = Vec::new();
        r.write(b"xxabc", &mut out);
        assert_eq!(out, b"xx");
        assert_eq!(r.held(), 3);
        r.write(b"q", &mut out);
        assert_eq!(r.held(), 0);
        assert_eq!(out, b"xxabcq");
    }

    #[test]
    fn crlf_in_multiline_secret() {
        let mut b = RedactorBuilder::new();
        b.secret("KEY", b"line-one\nline-two");
        let mut r = Redactor::new(b.build());
        let mut out = Vec::new();
        r.write(b"a line-one\r\nline-two b line-one\nline-two c", &mut out);
        r.flush(&mut out);
        assert_eq!(out, b"a *** b *** c");
    }

    #[test]
    fn encoded_forms() {
        let secret = b"p@ss w/\"rd\n99";
        let mut b = RedactorBuilder::new();
        b.secret("PW", secret);
        let m = b.build();
        let json = serde_json::to_string(std::str::from_utf8(secret).unwrap()).unwrap();
        let url = "p%40ss%20w%2F%22rd%0A99";
        let mut texts = vec![json.clone(), url.to_string()];
        for prefix in ["", "x", "xy"] {
            let mut raw = prefix.as_bytes().to_vec();
            raw.extend_from_slice(secret);
            raw.extend_from_slice(b"tail");
            texts.push(base64::engine::general_purpose::STANDARD.encode(&raw));
        }
        for t in texts {
            let mut r = Redactor::new(m.clone());
            let mut out = Vec::new();
            r.write(t.as_bytes(), &mut out);
            r.flush(&mut out);
            assert!(
                out.windows(3).any(|w| w == MASK),
                "{t} was not masked: {}",
                String::from_utf8_lossy(&out)
            );
        }
    }

    #[test]
    fn long_secrets_are_masked_whole() {
        let secret: Vec<u8> = (0..3000u32).map(|i| b'a' + (i * 7 % 26) as u8).collect();
        let mut b = RedactorBuilder::new();
        b.secret("CERT", &secret);
        assert!(b.warnings().is_empty());
        let m = b.build();
        let mut text = b"before ".to_vec();
        text.extend_from_slice(&secret);
        text.extend_from_slice(b" after ");
        text.extend_from_slice(
            base64::engine::general_purpose::STANDARD
                .encode(&secret)
                .as_bytes(),
        );
        text.extend_from_slice(b" partial ");
        // A part of the secret is not the secret: it stays.
        text.extend_from_slice(&secret[..2000]);
        text.extend_from_slice(b" end");
        let mut r = Redactor::new(m);
        let mut out = Vec::new();
        for piece in text.chunks(100) {
            r.write(piece, &mut out);
            assert!(r.held() < secret.len() * 4 / 3 + 4);
        }
        r.flush(&mut out);
        // base64 at offset 0 leaves at most the last, partial group visible.
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("before *** after ***"), "{s}");
        let partial = format!(
            " partial {} end",
            std::str::from_utf8(&secret[..2000]).unwrap()
        );
        assert!(s.ends_with(&partial) && s.len() < 40 + partial.len(), "{s}");
    }

    /// Issue 12, item 8: a 3,001-byte `aaa…ab` secret turned a long run of
    /// `a` into `***` (its 128-byte pieces matched on their own).
    #[test]
    fn a_repetitive_long_secret_does_not_mask_a_run_of_its_prefix() {
        let mut secret = vec![b'a'; 3000];
        secret.push(b'b');
        let mut b = RedactorBuilder::new();
        b.secret("REPEAT", &secret);
        let mut r = Redactor::new(b.build());
        let run = vec![b'a'; 1 << 20];
        let mut out = Vec::new();
        for piece in run.chunks(64 * 1024) {
            r.write(piece, &mut out);
        }
        r.write(b"\n", &mut out);
        r.flush(&mut out);
        assert_eq!(out.len(), run.len() + 1, "the run of a was masked");
        assert!(!out.windows(3).any(|w| w == MASK));
        // The secret itself, in that run, still is.
        let mut r = Redactor::new(b.build());
        let mut out = Vec::new();
        r.write(&run, &mut out);
        r.write(&secret, &mut out);
        r.write(b"!", &mut out);
        r.flush(&mut out);
        assert_eq!(out.len(), run.len() + 4);
        assert!(out.ends_with(b"***!"));
    }

    /// Issue 12, item 8: a 442-byte JSON secret masked an unrelated public
    /// line sharing its first keys.
    #[test]
    fn a_json_secret_does_not_mask_a_line_sharing_its_keys() {
        let doc = |key: &str| {
            format!(
                r#"{{"type": "service_account", "project_id": "example-project-123456", "client_email": "deployer@example-project-123456.iam.example.com", "auth_uri": "https://accounts.example.com/o/oauth2/auth", "private_key_id": "{key}"}}"#
            )
        };
        let secret = doc(&"k".repeat(442 - doc("").len()));
        assert_eq!(secret.len(), 442);
        let public = doc("public-key-id-not-a-secret");
        let mut b = RedactorBuilder::new();
        b.secret("GOOGLE_CREDENTIALS", secret.as_bytes());
        let mut r = Redactor::new(b.build());
        let mut out = Vec::new();
        r.write(format!("{public}\n{secret}\n").as_bytes(), &mut out);
        r.flush(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), format!("{public}\n***\n"));
    }

    #[test]
    fn huge_forms_are_masked_in_pieces_with_a_warning() {
        let secret: Vec<u8> = (0..LONG_SECRET as u32 + 10)
            .map(|i| b'a' + (i.wrapping_mul(2_654_435_761) >> 27) as u8 % 26)
            .collect();
        let mut b = RedactorBuilder::new();
        b.secret("HUGE", &secret);
        assert_eq!(b.warnings().len(), 1, "{:?}", b.warnings());
        assert!(b.warnings()[0].contains("HUGE"));
        let m = b.build();
        assert!(m.max_len() <= PIECE);
        let mut r = Redactor::new(m);
        let mut out = Vec::new();
        r.write(b"x ", &mut out);
        r.write(&secret, &mut out);
        r.write(b" y", &mut out);
        r.flush(&mut out);
        assert_eq!(out, b"x *** y");
    }

    /// Issue 12, item 7: the `quote()` (slashes kept) and `quote_plus()`
    /// (`+` for a space) percent-encodings, in both hex cases.
    #[test]
    fn url_encoding_styles() {
        let secret = b"p@ss w/rd:x'y!";
        let mut b = RedactorBuilder::new();
        b.secret("PW", secret);
        let m = b.build();
        for form in [
            "p%40ss%20w%2Frd%3Ax%27y%21",
            "p%40ss%20w/rd%3Ax%27y%21",
            "p%40ss+w%2Frd%3Ax%27y%21",
            "p%40ss%20w%2Frd%3Ax'y!",
            "p%40ss%20w%2frd%3ax%27y%21",
            "p%40ss%20w/rd%3ax%27y%21",
            "p%40ss+w%2frd%3ax%27y%21",
        ] {
            let mut r = Redactor::new(m.clone());
            let mut out = Vec::new();
            r.write(format!("a={form}&b").as_bytes(), &mut out);
            r.flush(&mut out);
            assert_eq!(String::from_utf8(out).unwrap(), "a=***&b", "{form}");
        }
    }

    #[test]
    fn short_values_warn_once() {
        let mut b = RedactorBuilder::new();
        b.secret("SHORT", b"abc")
            .secret("SHORT", b"xyz")
            .secret("OK", b"abcd");
        assert_eq!(b.warnings().len(), 1);
        assert!(b.warnings()[0].contains("SHORT"));
        assert_eq!(run(&[b"abc"], &[b"abc"]), b"abc");
    }
}
