//! Partition key templates (`--partition-key`).
//!
//! A template mixes literal text and placeholders: `{task_id}`, `{task_name}`, `{host}`, `{pod}`,
//! `{file}`, `{random}`, `{field.NAME}` (a top-level field of the JSON record), and fallbacks
//! `{task_id|random}` where the first non-empty value wins. `{{` and `}}` are literal braces.
//!
//! Kinesis hashes the key with MD5 to pick a shard and accepts 1 to 256 Unicode characters
//! (PutRecords API reference), so rendering never fails: a longer key is cut at 256 characters
//! (never inside a character), and an empty key becomes a random one.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;

use compact_str::CompactString;

/// Longest partition key Kinesis accepts, in Unicode characters (PutRecords API reference).
pub const MAX_KEY_CHARS: usize = 256;

/// The default template. A task's records share a key, so they land on one shard and a consumer
/// reads them in order; task ids are random UUIDs, so tasks spread evenly over all shards. Records
/// without a task (worker lifecycle lines, raw or json records without `task_id`) get a random key
/// and spread too. A fixed key would pin all traffic to one shard (1 MiB/s, 1000 records/s).
pub const DEFAULT_TEMPLATE: &str = "{task_id|random}";

/// Values a template reads from one record. `None` or empty means missing.
pub trait Fields {
    fn task_id(&self) -> Option<&str>;
    fn task_name(&self) -> Option<&str>;
    fn host(&self) -> Option<&str>;
    fn pod(&self) -> Option<&str>;
    fn file(&self) -> Option<&str>;
    /// A top-level field of the record.
    fn field(&self, name: &str) -> Option<&str>;
}

/// A template that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("empty partition key template")]
    EmptyTemplate,
    #[error("unclosed '{{' at byte {0} of the partition key template")]
    Unclosed(usize),
    #[error(
        "unmatched '}}' at byte {0} of the partition key template (write '}}}}' for a literal brace)"
    )]
    UnmatchedClose(usize),
    #[error("empty placeholder at byte {0} of the partition key template")]
    EmptyPlaceholder(usize),
    #[error(
        "unknown partition key placeholder {0:?}: expected task_id, task_name, host, pod, file, random or field.NAME"
    )]
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Var {
    TaskId,
    TaskName,
    Host,
    Pod,
    File,
    Random,
    Field(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// Alternatives: the first non-empty one wins.
    Choice(Vec<Var>),
}

/// A parsed `--partition-key` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Default for Template {
    fn default() -> Self {
        Template {
            source: DEFAULT_TEMPLATE.to_string(),
            parts: vec![Part::Choice(vec![Var::TaskId, Var::Random])],
        }
    }
}

impl Template {
    pub fn parse(source: &str) -> Result<Template, Error> {
        if source.is_empty() {
            return Err(Error::EmptyTemplate);
        }
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut rest = source;
        while let Some(i) = rest.find(['{', '}']) {
            let at = source.len() - rest.len() + i;
            literal.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if rest.as_bytes()[i] == b'}' {
                let Some(escaped) = after.strip_prefix('}') else {
                    return Err(Error::UnmatchedClose(at));
                };
                literal.push('}');
                rest = escaped;
                continue;
            }
            if let Some(escaped) = after.strip_prefix('{') {
                literal.push('{');
                rest = escaped;
                continue;
            }
            let close = after.find('}').ok_or(Error::Unclosed(at))?;
            let inner = &after[..close];
            if inner.contains('{') {
                return Err(Error::Unclosed(at));
            }
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            let vars = inner
                .split('|')
                .map(|name| parse_var(name.trim(), at))
                .collect::<Result<_, _>>()?;
            parts.push(Part::Choice(vars));
            rest = &after[close + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Template {
            source: source.to_string(),
            parts,
        })
    }

    /// The `NAME`s of `{field.NAME}` placeholders: the JSON fields a formatter must capture.
    pub fn field_names(&self) -> Vec<&str> {
        let vars = self.parts.iter().filter_map(|p| match p {
            Part::Choice(vars) => Some(vars),
            Part::Literal(_) => None,
        });
        let mut names: Vec<&str> = Vec::new();
        for var in vars.flatten() {
            if let Var::Field(name) = var
                && !names.contains(&name.as_str())
            {
                names.push(name);
            }
        }
        names
    }

    /// True when every record gets the same key: all traffic on one shard. Worth a warning.
    pub fn is_fixed(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Literal(_)))
    }

    /// Renders the key for one record: at most [`MAX_KEY_CHARS`] characters, never empty.
    pub fn render(&self, fields: &impl Fields, rng: &mut KeyRng) -> String {
        self.render_key(fields, rng).text.into_string()
    }

    /// The key a record needs now, or, when it would be made of randomness alone, an empty key
    /// marked random: any random key serves such a record, and the packer draws one only for the
    /// records that need their own ([`KeyRng::key`]). Inside an aggregate they share one.
    pub fn deferred_key(&self, fields: &impl Fields, rng: &mut KeyRng) -> Key {
        if self.chooses(fields) {
            self.render_key(fields, rng)
        } else {
            Key {
                text: CompactString::default(),
                random: true,
            }
        }
    }

    /// Whether the key for these fields holds anything chosen: a literal, or a placeholder's value
    /// found before its alternatives reach `random`. What `render_key` reports as not random.
    fn chooses(&self, fields: &impl Fields) -> bool {
        self.parts.iter().any(|part| match part {
            Part::Literal(text) => !text.is_empty(),
            Part::Choice(vars) => vars
                .iter()
                .take_while(|var| **var != Var::Random)
                .any(|var| var.value(fields).is_some_and(|v| !v.is_empty())),
        })
    }

    /// Renders the key, and tells whether it is random and nothing else.
    pub fn render_key(&self, fields: &impl Fields, rng: &mut KeyRng) -> Key {
        // Inline while it fits 24 bytes, as a `{random}` key does.
        let mut key = CompactString::default();
        let mut chosen = false;
        for part in &self.parts {
            match part {
                Part::Literal(text) => {
                    chosen |= !text.is_empty();
                    key.push_str(text);
                }
                Part::Choice(vars) => {
                    for var in vars {
                        if *var == Var::Random {
                            rng.push_key(&mut key);
                            break;
                        }
                        if let Some(value) = var.value(fields).filter(|v| !v.is_empty()) {
                            chosen = true;
                            key.push_str(value);
                            break;
                        }
                    }
                }
            }
        }
        if key.is_empty() {
            rng.push_key(&mut key);
        }
        // Cheap byte test first: a key of at most 256 bytes has at most 256 characters.
        if key.len() > MAX_KEY_CHARS
            && let Some((cut, _)) = key.char_indices().nth(MAX_KEY_CHARS)
        {
            key.truncate(cut);
        }
        Key {
            text: key,
            random: !chosen,
        }
    }
}

impl Var {
    /// The field's value; `None` for `random`, which is no field.
    fn value<'f>(&self, fields: &'f impl Fields) -> Option<&'f str> {
        match self {
            Var::Random => None,
            Var::TaskId => fields.task_id(),
            Var::TaskName => fields.task_name(),
            Var::Host => fields.host(),
            Var::Pod => fields.pod(),
            Var::File => fields.file(),
            Var::Field(name) => fields.field(name),
        }
    }
}

fn parse_var(name: &str, at: usize) -> Result<Var, Error> {
    Ok(match name {
        "" => return Err(Error::EmptyPlaceholder(at)),
        "task_id" => Var::TaskId,
        "task_name" => Var::TaskName,
        "host" => Var::Host,
        "pod" => Var::Pod,
        "file" => Var::File,
        "random" => Var::Random,
        other => match other.strip_prefix("field.") {
            Some(field) if !field.is_empty() => Var::Field(field.to_string()),
            _ => return Err(Error::Unknown(other.to_string())),
        },
    })
}

impl std::str::FromStr for Template {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Template::parse(s)
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// A rendered partition key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub text: CompactString,
    /// Made of `{random}` alone (the template asked for it, or every other choice was empty): the
    /// record has no affinity to any shard, and any other random key serves it as well.
    pub random: bool,
}

/// A fast, non-cryptographic generator for `{random}` keys (SplitMix64): keys only need to
/// spread over shards, not to be unpredictable. One per task; no locking.
#[derive(Debug, Clone)]
pub struct KeyRng {
    state: u64,
}

impl KeyRng {
    /// Seeded from the standard library's per-process random hasher keys.
    pub fn new() -> KeyRng {
        KeyRng {
            state: RandomState::new().hash_one(0x5eed_u64),
        }
    }

    pub fn from_seed(seed: u64) -> KeyRng {
        KeyRng { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A key of randomness alone: 16 hex digits, as `{random}` renders.
    pub fn key(&mut self) -> CompactString {
        let mut key = CompactString::default();
        self.push_key(&mut key);
        key
    }

    /// Appends 16 hex digits of randomness. Once per record: the digits are written into a
    /// buffer first, and an empty key is built inline in one step.
    fn push_key(&mut self, key: &mut CompactString) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = self.next_u64();
        let mut digits = [0u8; 16];
        for (i, digit) in digits.iter_mut().enumerate() {
            *digit = HEX[((n >> (60 - 4 * i)) & 0xf) as usize];
        }
        // Hex digits are ASCII, so this never falls back to the empty string.
        let digits = std::str::from_utf8(&digits).unwrap_or_default();
        if key.is_empty() {
            *key = CompactString::new(digits);
        } else {
            key.push_str(digits);
        }
    }
}

impl Default for KeyRng {
    fn default() -> Self {
        KeyRng::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Record {
        task_id: Option<&'static str>,
        host: Option<&'static str>,
        fields: Vec<(&'static str, &'static str)>,
    }

    impl Fields for Record {
        fn task_id(&self) -> Option<&str> {
            self.task_id
        }
        fn task_name(&self) -> Option<&str> {
            None
        }
        fn host(&self) -> Option<&str> {
            self.host
        }
        fn pod(&self) -> Option<&str> {
            None
        }
        fn file(&self) -> Option<&str> {
            Some("/var/log/worker.log")
        }
        fn field(&self, name: &str) -> Option<&str> {
            self.fields
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| *v)
        }
    }

    fn render(template: &str, record: &Record) -> String {
        Template::parse(template)
            .unwrap()
            .render(record, &mut KeyRng::from_seed(7))
    }

    fn is_random_key(key: &str) -> bool {
        key.len() == 16 && key.bytes().all(|b| b.is_ascii_hexdigit())
    }

    #[test]
    fn placeholders_literals_and_fallbacks() {
        let record = Record {
            task_id: Some("57f0"),
            host: Some("vm"),
            fields: vec![("tenant", "acme"), ("empty", "")],
        };
        let cases = [
            ("{task_id}", "57f0"),
            ("t-{task_id}-{host}", "t-57f0-vm"),
            ("{field.tenant}/{file}", "acme//var/log/worker.log"),
            ("{task_name|field.tenant}", "acme"),
            ("{field.empty|field.missing|host}", "vm"),
            ("{{literal}}", "{literal}"),
            ("{ task_id | random }", "57f0"),
        ];
        for (template, want) in cases {
            assert_eq!(render(template, &record), want, "{template}");
        }
        let no_task = Record::default();
        assert!(is_random_key(&render("{task_id|random}", &no_task)));
        // Missing fields render empty; an empty key falls back to random, never an error.
        assert!(is_random_key(&render("{task_id}{field.nope}", &no_task)));
        assert_eq!(render("x{task_id}", &no_task), "x");
        assert!(render("{random}", &no_task) != render("{random}{random}", &no_task));
    }

    #[test]
    fn a_random_key_is_the_generators_next_number_in_hex() {
        let no_task = Record::default();
        for seed in [0, 7, u64::MAX, 0x0123_4567_89ab_cdef] {
            let expected = format!("{:016x}", KeyRng::from_seed(seed).next_u64());
            let render = |template: &str| {
                Template::parse(template)
                    .unwrap()
                    .render(&no_task, &mut KeyRng::from_seed(seed))
            };
            assert_eq!(render("{random}"), expected);
            assert_eq!(render("w-{random}"), format!("w-{expected}"));
        }
    }

    #[test]
    fn keys_made_only_of_randomness_say_so() {
        let random = |template: &str, record: &Record| {
            Template::parse(template)
                .unwrap()
                .render_key(record, &mut KeyRng::from_seed(7))
                .random
        };
        let with_task = Record {
            task_id: Some("57f0"),
            ..Record::default()
        };
        let no_task = Record::default();
        assert!(random("{task_id|random}", &no_task));
        assert!(random("{random}", &with_task));
        assert!(random("{random}{random}", &no_task));
        assert!(
            random("{task_id}{field.nope}", &no_task),
            "empty falls back"
        );
        assert!(!random("{task_id|random}", &with_task));
        assert!(!random("x-{random}", &no_task), "a literal is a choice");
        assert!(!random("{random}-{task_id}", &with_task));
    }

    #[test]
    fn a_deferred_key_is_left_empty_only_when_it_would_be_random_alone() {
        let with_task = Record {
            task_id: Some("57f0"),
            fields: vec![("empty", "")],
            ..Record::default()
        };
        let no_task = Record::default();
        let templates = [
            "{task_id|random}",
            "{random}",
            "{random}{random}",
            "{task_id}{field.nope}",
            "{field.empty|random}",
            "{field.empty|task_id|random}",
            "x-{random}",
            "{random}-{task_id}",
            "{random|task_id}",
            "{host}",
        ];
        for template in templates {
            let template = Template::parse(template).unwrap();
            for record in [&with_task, &no_task] {
                let rendered = template.render_key(record, &mut KeyRng::from_seed(3));
                let deferred = template.deferred_key(record, &mut KeyRng::from_seed(3));
                if rendered.random {
                    assert_eq!(deferred.text, "", "{template}");
                    assert!(deferred.random, "{template}");
                } else {
                    assert_eq!(deferred, rendered, "{template}");
                }
            }
        }
        assert!(is_random_key(&KeyRng::from_seed(3).key()));
    }

    #[test]
    fn long_keys_are_cut_at_256_characters_not_bytes() {
        // 255 ASCII then multi-byte characters: the cut lands right after the first '정'.
        let long = format!("{}정산💥{}", "a".repeat(255), "b".repeat(10));
        let record = Record {
            fields: vec![("k", Box::leak(long.into_boxed_str()))],
            ..Record::default()
        };
        let key = render("{field.k}", &record);
        assert_eq!(key.chars().count(), MAX_KEY_CHARS);
        assert!(key.ends_with("a정"), "{key}");
        let emoji = Record {
            fields: vec![("k", Box::leak("💥".repeat(300).into_boxed_str()))],
            ..Record::default()
        };
        let key = render("{field.k}", &emoji);
        assert_eq!((key.chars().count(), key.len()), (256, 256 * 4));
    }

    #[test]
    fn bad_templates_are_errors() {
        let cases = [
            ("", Error::EmptyTemplate),
            ("{task_id", Error::Unclosed(0)),
            ("a{b{c}", Error::Unclosed(1)),
            ("a}b", Error::UnmatchedClose(1)),
            ("{}", Error::EmptyPlaceholder(0)),
            ("{task_id|}", Error::EmptyPlaceholder(0)),
            ("{taskid}", Error::Unknown("taskid".into())),
            ("{field.}", Error::Unknown("field.".into())),
        ];
        for (template, want) in cases {
            assert_eq!(Template::parse(template), Err(want), "{template}");
        }
    }

    #[test]
    fn field_names_fixed_and_default() {
        let t = Template::parse("{field.a|field.b}-{field.a}").unwrap();
        assert_eq!(t.field_names(), ["a", "b"]);
        assert!(Template::parse("shipper").unwrap().is_fixed());
        assert!(!t.is_fixed());
        assert_eq!(
            Template::default(),
            Template::parse(DEFAULT_TEMPLATE).unwrap()
        );
    }
}
