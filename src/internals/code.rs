//! Transfer codes: generating, parsing and judging the short code the two peers share.
//!
//! # Format
//!
//! A code looks like `7-orbit-velvet-canyon`:
//!
//! 1. a decimal **nameplate** (`7`), 1 to 4294967295, which lets the receiver find the right sender
//!    on the network. It is not secret: it is announced in the clear during discovery. Generated
//!    LAN codes use 1 to [`MAX_LAN_NAMEPLATE`] so they stay short.
//! 2. the **secret**: [`DEFAULT_WORDS`] distinct words (between [`MIN_WORDS`] and
//!    [`MAX_WORDS`]) drawn uniformly from the 256-word list [`WORDS`], each word one byte.
//!
//! The canonical form is lowercase with single `-` separators; [`Code::password`] feeds exactly
//! that string to SPAKE2. [`Code::parse`] is tolerant of what people type: surrounding
//! whitespace, upper case, spaces instead of dashes, repeated separators and leading zeros in
//! the nameplate all map to the same canonical code.
//!
//! # Entropy, and why 24 bits is enough
//!
//! SPAKE2 gives an attacker exactly one online guess per session: a wrong guess makes the key
//! confirmation fail, both peers abort, and the sender must start again with a fresh code. Three
//! list words are 24 bits, so a single guess succeeds with probability 1 in 2^24, about
//! 1 in 16.7 million. Offline guessing is impossible because nothing derived from the password
//! alone ever crosses the network.
//!
//! That argument only holds if the secret really is unpredictable, so a code the user picks
//! (`send --code`) goes through [`Code::parse_chosen`], which estimates the secret's entropy
//! ([`Code::entropy_bits`]) and refuses anything under [`MIN_ENTROPY_BITS`]. List words count
//! 8 bits each; anything else is estimated conservatively (see [`Code::entropy_bits`]).
//!
//! # Errors
//!
//! Every [`CodeError`] reads as a sentence that shows a valid code, and none of them repeats the
//! secret part of what was typed: at most it names one offending character.

pub mod words;

use std::fmt;
use std::str::FromStr;

use rand::{CryptoRng, Rng, RngCore};

pub use words::WORDS;

/// Number of words in a generated code unless the user asks for another count.
pub const DEFAULT_WORDS: usize = 3;
/// Fewest words a generated code may have (24 bits).
pub const MIN_WORDS: usize = 3;
/// Most words a generated code may have (64 bits).
pub const MAX_WORDS: usize = 8;
/// Entropy a user-chosen code's secret must reach: as much as [`MIN_WORDS`] list words.
pub const MIN_ENTROPY_BITS: f64 = 24.0;
/// Largest nameplate a generated LAN code uses (nameplates are 1..=MAX_LAN_NAMEPLATE).
pub const MAX_LAN_NAMEPLATE: u32 = 999;
/// Longest input [`Code::parse`] accepts, in bytes, after trimming surrounding whitespace.
pub const MAX_CODE_LEN: usize = 256;

/// Bits carried by one word of [`WORDS`].
const BITS_PER_WORD: f64 = 8.0;

/// A transfer code: a public nameplate and a secret of one or more parts.
///
/// The [`fmt::Debug`] output hides the secret; [`fmt::Display`] prints the whole canonical code.
#[derive(Clone, PartialEq, Eq)]
pub struct Code {
    nameplate: u32,
    /// Canonical secret: lowercase parts joined by single `-`, e.g. `orbit-velvet-canyon`.
    secret: String,
}

/// Why a string is not a usable code.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CodeError {
    /// Nothing but whitespace and separators was given.
    #[error("no code was given: a code is a number and words separated by '-', like `7-orbit-velvet-canyon`")]
    Empty,
    /// The first part is not a number at all (the nameplate was probably left out).
    #[error("the code must start with its number, like the 7 in `7-orbit-velvet-canyon`; type the whole code the sender shows")]
    MissingNameplate,
    /// The first part looks like a number but is not a valid nameplate. The payload says why; it
    /// never contains the secret.
    #[error("the number at the start of the code is invalid ({0}): it must be a whole number from 1 to {max}, followed by words, like `7-orbit-velvet-canyon`", max = u32::MAX)]
    BadNameplate(String),
    /// There is a nameplate but nothing after it.
    #[error("the code has a number but no words after it: type the whole code, like `7-orbit-velvet-canyon`")]
    MissingSecret,
    /// A secret part contains a character that is not printable ASCII. The payload names the
    /// character (quoted and escaped), never the part.
    #[error("the code contains the character {0}, which is not allowed: use letters, digits and punctuation, with words separated by '-' or spaces, like `7-orbit-velvet-canyon`")]
    BadPart(String),
    /// The input is longer than [`MAX_CODE_LEN`] bytes.
    #[error("the code is longer than {max} characters: a code is a number and a few words, like `7-orbit-velvet-canyon`", max = MAX_CODE_LEN)]
    TooLong,
    /// A code with this many words cannot be generated.
    #[error("a code cannot have {0} words: choose between {min} and {max} (the default {default} gives codes like `7-orbit-velvet-canyon`)", min = MIN_WORDS, max = MAX_WORDS, default = DEFAULT_WORDS)]
    WordCount(usize),
    /// A user-chosen code is too easy to guess.
    #[error("this code is too easy to guess (about {bits:.0} bits of secret, at least {min:.0} needed): use at least {words} words from the list, like `7-orbit-velvet-canyon`, or let p2p-copy generate one with `p2p-copy code`", words = MIN_WORDS)]
    TooWeak {
        /// Estimated entropy of the chosen secret.
        bits: f64,
        /// The required minimum, [`MIN_ENTROPY_BITS`].
        min: f64,
    },
}

impl Code {
    /// A fresh code with `words` random words (MIN_WORDS..=MAX_WORDS else CodeError::WordCount)
    /// and the given nameplate.
    ///
    /// Words are distinct, drawn uniformly from [`WORDS`]: log2(256 · 255 · …) bits, a
    /// fraction of a bit under `8 * words`, which is what [`Code::entropy_bits`] counts for
    /// them. A nameplate of 0 is refused with [`CodeError::BadNameplate`] because
    /// [`Code::parse`] would not accept the result.
    pub fn generate<R: RngCore + CryptoRng>(
        nameplate: u32,
        words: usize,
        rng: &mut R,
    ) -> Result<Code, CodeError> {
        if !(MIN_WORDS..=MAX_WORDS).contains(&words) {
            return Err(CodeError::WordCount(words));
        }
        if nameplate == 0 {
            return Err(CodeError::BadNameplate("0 is not allowed".into()));
        }
        // Distinct words: a repeated word adds nothing a guesser must try (and a chosen code
        // with one is refused), at a cost of 0.02 bits for three words. Nor three in a row at
        // evenly spaced places in the list (`ant-bat-cat`), which a chosen code is charged as
        // one word for (about 1 in 250 draws of three, for under 0.01 bits).
        loop {
            let picked: Vec<usize> = rand::seq::index::sample(rng, WORDS.len(), words).into_vec();
            if word_runs(&picked) == words {
                let secret = picked.iter().map(|&i| WORDS[i]).collect::<Vec<&str>>().join("-");
                return Ok(Code { nameplate, secret });
            }
        }
    }

    /// Random nameplate in 1..=MAX_LAN_NAMEPLATE.
    pub fn random_nameplate<R: RngCore>(rng: &mut R) -> u32 {
        rng.gen_range(1..=MAX_LAN_NAMEPLATE)
    }

    /// Tolerant parse of a typed code.
    ///
    /// Surrounding whitespace is ignored, case is folded, and parts may be separated by `-`,
    /// any whitespace, or several of them mixed (`"7 Orbit  velvet-canyon"` is
    /// `7-orbit-velvet-canyon`). The first part must be a decimal nameplate from 1 to
    /// `u32::MAX` with no sign (a code starting with `-` is refused; leading zeros are dropped,
    /// `07` is `7`). At least one secret part must follow. Secret parts need not be list words,
    /// but must be printable ASCII: other characters are refused rather than normalised, so the
    /// same typed code always yields the same password on both machines. The trimmed input may
    /// be at most [`MAX_CODE_LEN`] bytes.
    pub fn parse(s: &str) -> Result<Code, CodeError> {
        let s = s.trim();
        if s.len() > MAX_CODE_LEN {
            return Err(CodeError::TooLong);
        }
        let mut parts = s.split(|c: char| c == '-' || c.is_whitespace()).filter(|p| !p.is_empty());
        let first = parts.next().ok_or(CodeError::Empty)?;
        if s.starts_with('-') {
            return Err(CodeError::BadNameplate("it starts with '-'".into()));
        }
        let nameplate = parse_nameplate(first)?;

        let mut secret = String::with_capacity(s.len());
        for part in parts {
            if let Some(bad) = part.chars().find(|c| !c.is_ascii_graphic()) {
                return Err(CodeError::BadPart(format!("{bad:?}")));
            }
            if !secret.is_empty() {
                secret.push('-');
            }
            secret.push_str(&part.to_ascii_lowercase());
        }
        if secret.is_empty() {
            return Err(CodeError::MissingSecret);
        }
        Ok(Code { nameplate, secret })
    }

    /// [`Code::parse`] plus the entropy check used for a code the user chose (`send --code`).
    ///
    /// Refuses codes whose [`Code::entropy_bits`] is below [`MIN_ENTROPY_BITS`] with
    /// [`CodeError::TooWeak`], whose message tells the user what to do instead.
    pub fn parse_chosen(s: &str) -> Result<Code, CodeError> {
        let code = Code::parse(s)?;
        let bits = code.entropy_bits();
        if bits < MIN_ENTROPY_BITS {
            return Err(CodeError::TooWeak { bits, min: MIN_ENTROPY_BITS });
        }
        Ok(code)
    }

    /// The public nameplate.
    pub fn nameplate(&self) -> u32 {
        self.nameplate
    }

    /// The same secret under another nameplate (the one a rendezvous node allocated).
    /// Nameplate 0 is refused, as [`Code::parse`] would refuse the result.
    pub fn with_nameplate(&self, nameplate: u32) -> Result<Code, CodeError> {
        if nameplate == 0 {
            return Err(CodeError::BadNameplate("0 is not allowed".into()));
        }
        Ok(Code { nameplate, secret: self.secret.clone() })
    }

    /// Estimated entropy of the secret part in bits. The nameplate counts nothing: it is public.
    ///
    /// - Each distinct word of [`WORDS`] counts 8 bits; a repeated one counts once
    ///   (`orbit-orbit-orbit` is one word to guess). Generated codes never repeat a word.
    /// - All other parts are assumed to be chosen by a person and are estimated together,
    ///   conservatively. Each part is first reduced to a *core*: a part that repeats a shorter
    ///   unit (`abab`, `passwordpassword`) becomes that unit, and a run of three or more
    ///   characters with a constant step (`aaaa`, `1234`, `abcd`, `9753`) becomes its first
    ///   character. Parts with the same core count once. The cores are joined and the same
    ///   reduction is applied to the whole (so `a-b-c-d` is as weak as `abcd`). The result is
    ///   scored with the NIST SP 800-63-1 (Appendix A) schedule for user-chosen passwords:
    ///   4 bits for the first character, 2 for characters 2–8, 1.5 for 9–20, 1 after that;
    ///   no character counts more than log2 of the pool of character classes used (lowercase
    ///   26, digits 10, other printable 33).
    ///
    /// This underestimates random strings on purpose; such codes should use list words.
    pub fn entropy_bits(&self) -> f64 {
        let mut list_words: Vec<usize> = Vec::new();
        let mut cores: Vec<&[u8]> = Vec::new();
        let mut common = 0;
        for part in self.secret_parts() {
            if let Some(index) = word_index(part) {
                if !list_words.contains(&usize::from(index)) {
                    list_words.push(usize::from(index));
                }
            } else if COMMON.contains(&reduce(part.as_bytes())) {
                // A password everybody tries first is worth one guess of a character.
                common += 1;
            } else {
                let core = reduce(part.as_bytes());
                if !cores.contains(&core) {
                    cores.push(core);
                }
            }
        }
        let joined = cores.concat();
        word_runs(&list_words) as f64 * BITS_PER_WORD
            + chosen_string_bits(reduce(&joined))
            + f64::from(common.min(1)) * 4.0
    }

    /// Canonical bytes fed to SPAKE2 as the password: the full canonical code string, e.g.
    /// `b"7-orbit-velvet-canyon"`.
    pub fn password(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }

    /// Number of secret parts.
    pub fn word_count(&self) -> usize {
        self.secret_parts().count()
    }

    /// The canonical secret parts, in order.
    fn secret_parts(&self) -> impl Iterator<Item = &str> {
        self.secret.split('-')
    }
}

/// Index of `word` in [`WORDS`], if it is a list word (exact, lowercase match).
pub fn word_index(word: &str) -> Option<u8> {
    let index = WORDS.binary_search(&word).ok()?;
    u8::try_from(index).ok()
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.nameplate, self.secret)
    }
}

impl fmt::Debug for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Code")
            .field("nameplate", &self.nameplate)
            .field("secret", &format_args!("<secret>"))
            .finish()
    }
}

impl FromStr for Code {
    type Err = CodeError;

    fn from_str(s: &str) -> Result<Code, CodeError> {
        Code::parse(s)
    }
}

/// Parses the first part of a code as a nameplate. Error payloads never echo the part itself
/// beyond one offending character, since a user who forgot the nameplate typed a secret word here.
fn parse_nameplate(part: &str) -> Result<u32, CodeError> {
    if !part.bytes().any(|b| b.is_ascii_digit()) {
        return Err(CodeError::MissingNameplate);
    }
    if let Some(bad) = part.chars().find(|c| !c.is_ascii_digit()) {
        return Err(CodeError::BadNameplate(format!("it contains {bad:?}")));
    }
    // All ASCII digits and non-empty here, so the only possible failure is overflow.
    match part.parse::<u32>() {
        Ok(0) => Err(CodeError::BadNameplate("0 is not allowed".into())),
        Ok(nameplate) => Ok(nameplate),
        Err(_) => Err(CodeError::BadNameplate("it is too large".into())),
    }
}

/// How many words a guesser must find in `indices` (list positions, in the order typed): a
/// run of three or more whose positions step evenly (`ant-bat-cat`, every tenth word, the
/// list backwards) is picked as one.
fn word_runs(indices: &[usize]) -> usize {
    let mut words = 0;
    let mut i = 0;
    while i < indices.len() {
        let mut end = i + 1;
        if i + 2 < indices.len() {
            let step = |k: usize| indices[k + 1] as i64 - indices[k] as i64;
            while end + 1 < indices.len() && step(end) == step(i) {
                end += 1;
            }
            if end - i < 2 {
                end = i + 1;
            } else {
                end += 1;
            }
        }
        words += 1;
        i = end;
    }
    words
}

/// Cores of the passwords people pick first (from published lists of the most common ones):
/// each counts as much as one character, whatever its length.
const COMMON: [&[u8]; 40] = [
    b"password",
    b"passw0rd",
    b"p@ssw0rd",
    b"qwerty",
    b"qwertyuiop",
    b"asdf",
    b"zxcvbn",
    b"letmein",
    b"admin",
    b"administrator",
    b"welcome",
    b"dragon",
    b"monkey",
    b"iloveyou",
    b"secret",
    b"master",
    b"login",
    b"abc123",
    b"football",
    b"baseball",
    b"shadow",
    b"sunshine",
    b"princess",
    b"trustno1",
    b"superman",
    b"batman",
    b"starwars",
    b"hello",
    b"freedom",
    b"whatever",
    b"access",
    b"changeme",
    b"default",
    b"guest",
    b"root",
    b"test",
    b"p2pcopy",
    b"p2p",
    b"code",
    b"pass",
];

/// The weak core of a user-chosen string: the shortest unit it repeats, and a constant-step run
/// of three or more characters cut to its first character.
fn reduce(bytes: &[u8]) -> &[u8] {
    let len = bytes.len();
    let period = (1..=len)
        .find(|&p| len % p == 0 && bytes.iter().enumerate().all(|(i, &b)| b == bytes[i % p]))
        .unwrap_or(len);
    let unit = &bytes[..period];
    let constant_step = unit.len() >= 3
        && unit
            .windows(2)
            .all(|w| i16::from(w[1]) - i16::from(w[0]) == i16::from(unit[1]) - i16::from(unit[0]));
    if constant_step {
        &unit[..1]
    } else {
        unit
    }
}

/// NIST SP 800-63-1 Appendix A estimate for a user-chosen string, capped per character at
/// log2 of the pool of character classes the string uses.
fn chosen_string_bits(bytes: &[u8]) -> f64 {
    let lower = bytes.iter().any(|b| b.is_ascii_lowercase());
    let digit = bytes.iter().any(|b| b.is_ascii_digit());
    let other = bytes.iter().any(|b| !b.is_ascii_lowercase() && !b.is_ascii_digit());
    let pool: u32 = [(lower, 26), (digit, 10), (other, 33)]
        .iter()
        .filter(|(used, _)| *used)
        .map(|(_, size)| size)
        .sum();
    if pool == 0 {
        return 0.0;
    }
    let cap = f64::from(pool).log2();
    (1..=bytes.len())
        .map(|position| {
            let schedule = match position {
                1 => 4.0,
                2..=8 => 2.0,
                9..=20 => 1.5,
                _ => 1.0,
            };
            f64::min(schedule, cap)
        })
        .sum()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn code(nameplate: u32, secret: &str) -> Code {
        Code { nameplate, secret: secret.into() }
    }

    #[test]
    fn generate_display_parse_round_trip() {
        for seed in 0..50u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            for words in MIN_WORDS..=MAX_WORDS {
                let nameplate = Code::random_nameplate(&mut rng);
                let generated = Code::generate(nameplate, words, &mut rng).unwrap();
                assert_eq!(generated.nameplate(), nameplate);
                assert_eq!(generated.word_count(), words, "seed {seed}");
                let text = generated.to_string();
                assert_eq!(Code::parse(&text), Ok(generated.clone()), "seed {seed}: {text}");
                assert_eq!(Code::parse_chosen(&text), Ok(generated.clone()), "seed {seed}");
                assert_eq!(text.parse::<Code>(), Ok(generated), "seed {seed}");
            }
        }
    }

    #[test]
    fn generated_words_come_from_the_list() {
        let mut rng = StdRng::seed_from_u64(7);
        let generated = Code::generate(7, MAX_WORDS, &mut rng).unwrap();
        assert!(generated.secret_parts().all(|w| word_index(w).is_some()));
    }

    #[test]
    fn generate_is_deterministic_for_a_seed() {
        let a = Code::generate(1, 3, &mut StdRng::seed_from_u64(42)).unwrap();
        let b = Code::generate(1, 3, &mut StdRng::seed_from_u64(42)).unwrap();
        let c = Code::generate(1, 3, &mut StdRng::seed_from_u64(43)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn generate_refuses_bad_word_counts_and_nameplate_zero() {
        let mut rng = StdRng::seed_from_u64(1);
        for words in [0, 1, MIN_WORDS - 1, MAX_WORDS + 1, usize::MAX] {
            assert_eq!(Code::generate(7, words, &mut rng), Err(CodeError::WordCount(words)));
        }
        assert!(matches!(Code::generate(0, 3, &mut rng), Err(CodeError::BadNameplate(_))));
    }

    #[test]
    fn random_nameplate_stays_in_range() {
        let mut rng = StdRng::seed_from_u64(3);
        let mut seen_small = false;
        let mut seen_large = false;
        for _ in 0..10_000 {
            let n = Code::random_nameplate(&mut rng);
            assert!((1..=MAX_LAN_NAMEPLATE).contains(&n), "{n}");
            seen_small |= n < 100;
            seen_large |= n > 900;
        }
        assert!(seen_small && seen_large);
    }

    #[test]
    fn parse_is_tolerant() {
        let expected = code(7, "orbit-velvet-canyon");
        for typed in [
            "7-orbit-velvet-canyon",
            "7 Orbit  velvet-canyon",
            "  7-orbit-velvet-canyon\n",
            "07-ORBIT-VELVET-CANYON",
            "0007 orbit velvet canyon",
            "7--orbit - velvet canyon",
            "7\tOrbit\u{a0}velvet-canyon",
            "7-orbit-velvet-canyon-",
            "7 -orbit- velvet -canyon",
        ] {
            assert_eq!(Code::parse(typed), Ok(expected.clone()), "{typed:?}");
        }
    }

    #[test]
    fn parse_accepts_custom_parts_and_extreme_nameplates() {
        assert_eq!(Code::parse("1-x"), Ok(code(1, "x")));
        assert_eq!(Code::parse("4294967295-Hello!"), Ok(code(u32::MAX, "hello!")));
        assert_eq!(Code::parse("12 my_p@ss#1"), Ok(code(12, "my_p@ss#1")));
    }

    #[test]
    fn parse_errors() {
        let cases: &[(&str, CodeError)] = &[
            ("", CodeError::Empty),
            ("   \n", CodeError::Empty),
            ("- - --", CodeError::Empty),
            ("orbit-velvet-canyon", CodeError::MissingNameplate),
            ("0-orbit-velvet", CodeError::BadNameplate("0 is not allowed".into())),
            ("000-orbit-velvet", CodeError::BadNameplate("0 is not allowed".into())),
            ("4294967296-orbit", CodeError::BadNameplate("it is too large".into())),
            ("99999999999999999999-orbit", CodeError::BadNameplate("it is too large".into())),
            ("+7-orbit-velvet", CodeError::BadNameplate("it contains '+'".into())),
            ("-7-orbit-velvet", CodeError::BadNameplate("it starts with '-'".into())),
            ("7a-orbit-velvet", CodeError::BadNameplate("it contains 'a'".into())),
            ("7", CodeError::MissingSecret),
            ("7 - -", CodeError::MissingSecret),
            ("7-orbit-vélvet", CodeError::BadPart("'é'".into())),
            ("7-orb\u{7}it", CodeError::BadPart("'\\u{7}'".into())),
            ("7-orbit-\u{200b}", CodeError::BadPart("'\\u{200b}'".into())),
        ];
        for (typed, expected) in cases {
            assert_eq!(Code::parse(typed).as_ref(), Err(expected), "{typed:?}");
        }
    }

    #[test]
    fn length_cap_is_256_bytes_after_trimming() {
        let longest = format!("7-{}", "a".repeat(MAX_CODE_LEN - 2));
        assert!(Code::parse(&longest).is_ok());
        assert!(Code::parse(&format!("  {longest}\n")).is_ok());
        assert_eq!(Code::parse(&format!("{longest}b")), Err(CodeError::TooLong));
        assert_eq!(Code::parse(&"x".repeat(100_000)), Err(CodeError::TooLong));
    }

    #[test]
    fn every_error_message_shows_a_valid_code_in_the_house_style() {
        let errors = [
            CodeError::Empty,
            CodeError::MissingNameplate,
            CodeError::BadNameplate("0 is not allowed".into()),
            CodeError::MissingSecret,
            CodeError::BadPart("'é'".into()),
            CodeError::TooLong,
            CodeError::WordCount(9),
            CodeError::TooWeak { bits: 18.0, min: MIN_ENTROPY_BITS },
        ];
        for error in errors {
            let message = error.to_string();
            assert!(message.contains("`7-orbit-velvet-canyon`"), "{message}");
            // As every message after `error: `: lowercase, no full stop at the end.
            assert!(message.starts_with(char::is_lowercase), "{message}");
            assert!(!message.ends_with('.'), "{message}");
        }
        let weak = CodeError::TooWeak { bits: 18.0, min: 24.0 }.to_string();
        assert!(weak.contains("about 18 bits"), "{weak}");
        assert!(weak.contains("at least 24 needed"), "{weak}");
        assert!(weak.contains("at least 3 words"), "{weak}");
        assert!(weak.contains("`p2p-copy code`"), "{weak}");
        assert!(CodeError::WordCount(9).to_string().contains("between 3 and 8"));
        let bad_nameplate = CodeError::BadNameplate("it is too large".into()).to_string();
        assert!(bad_nameplate.contains("from 1 to 4294967295"), "{bad_nameplate}");
    }

    #[test]
    fn error_messages_never_contain_the_secret() {
        for typed in [
            "7-hunter-quokké",
            "7-hunter-quo\u{7}kka",
            "hunter-quokka",
            "7hunter-quokka",
            "+hunter-quokka",
            "-7-hunter-quokka",
            "7-hunter",
            "7-hunter-hunter-hunter",
        ] {
            let error = Code::parse_chosen(typed).unwrap_err();
            let message = format!("{error} {error:?}");
            assert!(!message.contains("hunter"), "{typed:?} leaked: {message}");
            assert!(!message.contains("quok"), "{typed:?} leaked: {message}");
        }
    }

    #[test]
    fn entropy_of_generated_codes_is_8_bits_per_word() {
        let mut rng = StdRng::seed_from_u64(11);
        for words in MIN_WORDS..=MAX_WORDS {
            let generated = Code::generate(5, words, &mut rng).unwrap();
            assert_eq!(generated.entropy_bits(), 8.0 * words as f64);
        }
        assert_eq!(code(7, "orbit-velvet-canyon").entropy_bits(), 24.0);
        // A repeated word is one word to guess.
        assert_eq!(code(7, "orbit-orbit-orbit").entropy_bits(), 8.0);
        assert_eq!(code(7, "orbit-velvet-orbit").entropy_bits(), 16.0);
        // Generated codes never repeat a word, so they pass as chosen codes too.
        for _ in 0..2000 {
            let c = Code::generate(5, MIN_WORDS, &mut rng).unwrap();
            let parts: Vec<&str> = c.secret_parts().collect();
            assert!((1..parts.len()).all(|i| !parts[..i].contains(&parts[i])), "{c}");
            Code::parse_chosen(&c.to_string()).unwrap();
        }
    }

    /// Human picks (issue 13 #12): list words at evenly spaced places count as one, and the
    /// passwords people try first count as one character.
    #[test]
    fn human_picks_are_charged_as_what_a_guesser_tries() {
        let words = |idx: &[usize]| idx.iter().map(|&i| WORDS[i]).collect::<Vec<_>>().join("-");
        for run in [&[10, 11, 12][..], &[0, 1, 2, 3], &[200, 150, 100], &[5, 9, 13, 17, 21]] {
            let c = code(7, &words(run));
            assert_eq!(c.entropy_bits(), 8.0, "{c}");
            assert!(Code::parse_chosen(&c.to_string()).is_err(), "{c}");
        }
        // A run inside a longer code counts once; the rest as usual.
        assert_eq!(code(7, &words(&[40, 3, 4, 5, 99])).entropy_bits(), 24.0);
        assert_eq!(code(7, &words(&[10, 11, 40])).entropy_bits(), 24.0);
        for common in ["password", "qwerty-orbit", "letmein-orbit-velvet", "passwordpassword"] {
            let c = code(7, common);
            assert!(Code::parse_chosen(&c.to_string()).is_err(), "{common}: {}", c.entropy_bits());
        }
        assert_eq!(code(7, "orbit-velvet-password").entropy_bits(), 20.0);
    }

    #[test]
    fn entropy_estimates_for_chosen_parts() {
        let cases: &[(&str, f64)] = &[
            ("aaaaaaaa", 4.0),
            ("1234", 10f64.log2()),
            ("abcd", 4.0),
            ("a-b-c-d-e-f-g-h", 4.0),
            ("aaaa-bbbb", 4.0 + 2.0),
            // A common password is one character's worth, however it is repeated.
            ("password", 4.0),
            ("password-password", 4.0),
            ("passwordpassword", 4.0),
            ("orbit-password", 8.0 + 4.0),
            ("zebrawing", 4.0 + 7.0 * 2.0 + 1.5),
            // 25 characters: 4 + 7 * 2 + 12 * 1.5 + 5 * 1.
            ("correct-horse-battery-staple", 41.0),
        ];
        for (secret, expected) in cases {
            let bits = code(7, secret).entropy_bits();
            assert!((bits - expected).abs() < 1e-9, "{secret}: {bits} != {expected}");
        }
    }

    #[test]
    fn weak_chosen_codes_are_refused() {
        for typed in [
            "7-password",
            "7-orbit-orbit-orbit",
            "7-orbit-velvet-velvet",
            "7-aaaaaaaa",
            "7-1234",
            "7-123456789012",
            "7-orbit-velvet",
            "7-qwertyui",
            "7-a-b-c-d-e-f-g-h-i-j-k",
            "7-password-password-password",
        ] {
            match Code::parse_chosen(typed) {
                Err(CodeError::TooWeak { bits, min }) => {
                    assert!(bits < MIN_ENTROPY_BITS, "{typed}: {bits}");
                    assert_eq!(min, MIN_ENTROPY_BITS);
                }
                other => panic!("{typed}: expected TooWeak, got {other:?}"),
            }
            assert!(Code::parse(typed).is_ok(), "{typed}: plain parse must still accept it");
        }
    }

    #[test]
    fn strong_chosen_codes_are_accepted() {
        for typed in [
            "7-orbit-velvet-canyon",
            "7 Orbit Velvet Canyon",
            "42-correct-horse-battery-staple",
            "3-orbit-velvet-canyon-maple-river",
        ] {
            assert!(Code::parse_chosen(typed).is_ok(), "{typed}");
        }
    }

    #[test]
    fn password_is_the_canonical_code() {
        let parsed = Code::parse(" 07 Orbit velvet--CANYON ").unwrap();
        assert_eq!(parsed.password(), b"7-orbit-velvet-canyon".to_vec());
        assert_eq!(parsed.to_string(), "7-orbit-velvet-canyon");
        assert_eq!(parsed.nameplate(), 7);
        assert_eq!(parsed.word_count(), 3);
    }

    #[test]
    fn debug_hides_the_secret() {
        let parsed = Code::parse("7-orbit-velvet-canyon").unwrap();
        let debug = format!("{parsed:?}");
        assert_eq!(debug, r#"Code { nameplate: 7, secret: <secret> }"#);
        let pretty = format!("{parsed:#?}");
        assert!(!pretty.contains("orbit") && !pretty.contains("canyon"), "{pretty}");
    }

    #[test]
    fn word_index_finds_list_words_only() {
        assert_eq!(word_index(WORDS[0]), Some(0));
        assert_eq!(word_index(WORDS[255]), Some(255));
        assert_eq!(word_index("orbit").map(|i| WORDS[usize::from(i)]), Some("orbit"));
        assert_eq!(word_index("Orbit"), None);
        assert_eq!(word_index("orbi"), None);
        assert_eq!(word_index(""), None);
        for (i, word) in WORDS.iter().enumerate() {
            assert_eq!(word_index(word).map(usize::from), Some(i));
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in any::<String>()) {
            let _ = Code::parse(&s);
            let _ = Code::parse_chosen(&s);
        }

        #[test]
        fn parse_never_panics_on_code_like_input(s in "[ -~\t\u{a0}é]{0,300}") {
            if let Ok(parsed) = Code::parse_chosen(&s) {
                prop_assert!(parsed.entropy_bits() >= MIN_ENTROPY_BITS);
            }
        }

        #[test]
        fn canonical_form_is_a_fixed_point(s in "[0-9]{1,4}[- ]{1,2}[a-zA-Z0-9!#]{1,8}([- ]{1,3}[a-zA-Z]{1,8}){0,4}") {
            if let Ok(parsed) = Code::parse(&s) {
                let text = parsed.to_string();
                prop_assert_eq!(Code::parse(&text), Ok(parsed.clone()));
                prop_assert_eq!(parsed.password(), text.into_bytes());
            }
        }

        #[test]
        fn generated_codes_round_trip(seed in any::<u64>(), words in MIN_WORDS..=MAX_WORDS, nameplate in 1..=u32::MAX) {
            let mut rng = StdRng::seed_from_u64(seed);
            let generated = Code::generate(nameplate, words, &mut rng).unwrap();
            prop_assert_eq!(Code::parse(&generated.to_string()), Ok(generated.clone()));
            prop_assert_eq!(generated.entropy_bits(), 8.0 * words as f64);
            prop_assert_eq!(generated.word_count(), words);
        }
    }
}
