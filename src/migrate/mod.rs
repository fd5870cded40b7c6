//! `sluice migrate-config`: an hmac-file-server 3.4 configuration in, an equivalent Sluice
//! configuration out.
//!
//! Owns: reading their TOML as an untyped [`toml::Value`] (their loader is case-insensitive and
//! has many sections), the key table (`map`), unit conversion (`units`) and rendering the
//! Sluice TOML with a comment on every key saying where it came from. Every input key ends up
//! either mapped or in a comment with the reason it has no equivalent; nothing is dropped.
//! Must not: touch files, the environment or the network (`main` reads and writes), or emit a
//! config that `Config::from_toml` rejects (the result is validated before it is returned).

mod engine;
mod keys;
mod map;
mod units;

#[cfg(test)]
mod tests;

use toml::{Table, Value};

use crate::config::Config;

/// The migrated configuration and what the operator should know about it.
#[derive(Debug)]
pub struct Migration {
    /// The Sluice configuration (TOML with comments).
    pub config: String,
    /// Points that need a decision or a manual step (printed to stderr by the CLI).
    pub notes: Vec<String>,
}

/// Why a migration failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("cannot parse the hmac-file-server config: {0}")]
    Parse(String),
    /// A bug in the mapping: the output did not validate. Carries the output for the report.
    #[error("the migrated config does not validate ({reason}); please report this with the input")]
    Invalid { reason: String, config: String },
}

/// Translate hmac-file-server TOML text into Sluice TOML text.
pub fn migrate(input: &str) -> Result<Migration, MigrateError> {
    let root: Table = toml::from_str(input).map_err(|e| MigrateError::Parse(e.to_string()))?;
    let mut ctx = Ctx::new(&root);
    walk(&mut ctx, "", "", &root);
    map::finish(&mut ctx);
    let config = ctx.out.render();
    if let Err(e) = Config::from_toml(&config) {
        return Err(MigrateError::Invalid {
            reason: e.to_string(),
            config,
        });
    }
    let (mapped, unmapped) = (ctx.out.cited_mapped, ctx.out.cited_unmapped);
    let mut notes = ctx.out.notes;
    notes.push(format!(
        "{mapped} keys mapped; {unmapped} without a Sluice equivalent, listed with the reason at the end of the output"
    ));
    Ok(Migration { config, notes })
}

/// One input key: where it sits in their file (original spelling) and its value.
pub(crate) struct Src<'a> {
    pub section: &'a str,
    pub key: &'a str,
    pub value: &'a Value,
    /// From the adaptive template: hmac-file-server 3.4 never read it; mapped for its intent.
    pub intent_only: bool,
}

impl Src<'_> {
    /// `[section] key = value`, secrets redacted: how the output names this key.
    pub fn cite(&self) -> String {
        let section = if self.section.is_empty() {
            "(top level)".to_owned()
        } else {
            format!("[{}]", self.section)
        };
        format!("{section} {} = {}", self.key, show(self.key, self.value))
    }
}

/// A value for a comment: compact, truncated, secrets redacted.
fn show(key: &str, v: &Value) -> String {
    let k = key.to_ascii_lowercase();
    if ["secret", "password", "token"]
        .iter()
        .any(|w| k.contains(w))
    {
        return "<redacted>".into();
    }
    let s = match v {
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(|x| show("", x)).collect::<Vec<_>>().join(", ")
        ),
        Value::Table(t) => format!(
            "{{ {} }}",
            t.iter()
                .map(|(k, v)| format!("{k} = {}", show(k, v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    };
    match s.char_indices().nth(72) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s,
    }
}

/// What the handlers see: the whole input (for keys that combine) and the output being built.
pub(crate) struct Ctx<'a> {
    root: &'a Table,
    pub out: Out,
}

impl<'a> Ctx<'a> {
    fn new(root: &'a Table) -> Self {
        Self {
            root,
            out: Out::default(),
        }
    }

    /// The input value at `section` (dotted, lowercase) and `key` (lowercase), matched
    /// case-insensitively like their loader.
    pub fn get(&self, section: &str, key: &str) -> Option<&'a Value> {
        let mut table = self.root;
        for part in section.split('.').filter(|p| !p.is_empty()) {
            table = find(table, part)?.as_table()?;
        }
        find(table, key)
    }
}

fn find<'t>(t: &'t Table, key: &str) -> Option<&'t Value> {
    t.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v)
}

/// Visit every key of `table` (a section of their file) in the table's order.
fn walk(ctx: &mut Ctx, section: &str, section_lc: &str, table: &Table) {
    let mut keys: Vec<(&String, &Value)> = table.iter().collect();
    keys.sort_by_key(|(k, _)| {
        (
            map::order(section_lc, &k.to_ascii_lowercase()),
            k.to_owned(),
        )
    });
    for (key, value) in keys {
        let key_lc = key.to_ascii_lowercase();
        let sub_lc = join(section_lc, &key_lc);
        if let (Value::Table(t), true) = (value, map::is_section(&sub_lc)) {
            walk(ctx, &join(section, key), &sub_lc, t);
            continue;
        }
        let src = Src {
            section,
            key,
            value,
            intent_only: map::intent_only(section_lc, &key_lc),
        };
        match map::rule(section_lc, &key_lc) {
            Some(map::Rule::Fn(f)) => f(ctx, &src),
            Some(map::Rule::Size(at, why)) => map::size_rule(ctx, &src, *at, why),
            Some(map::Rule::Duration(at, why)) => map::duration_rule(ctx, &src, *at, why),
            Some(map::Rule::None(why)) => ctx.out.skip(&src, why),
            None => match value {
                Value::Table(t) => walk(ctx, &join(section, key), &sub_lc, t),
                _ => ctx
                    .out
                    .skip(&src, &map::unknown(section_lc, &key_lc, value)),
            },
        }
    }
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_owned()
    } else {
        format!("{a}.{b}")
    }
}

/// A Sluice key: (table, key), e.g. `("engine.clients", "chunk_min")`.
pub(crate) type At = (&'static str, &'static str);

/// Sluice tables in output order (`auth.keys` is rendered after `auth`).
const SECTIONS: &[&str] = &[
    "server",
    "storage",
    "retention",
    "quota",
    "audit",
    "auth",
    "resumable",
    "engine",
    "engine.quality",
    "engine.clients",
];

struct Entry {
    at: At,
    value: Value,
    comments: Vec<String>,
}

/// One `[[auth.keys]]` entry.
pub(crate) struct KeyOut {
    pub id: &'static str,
    pub secret: String,
    pub comments: Vec<String>,
}

/// The Sluice config being built.
#[derive(Default)]
pub(crate) struct Out {
    entries: Vec<Entry>,
    section_notes: Vec<(&'static str, String)>,
    pub keys: Vec<KeyOut>,
    /// (reason, cites), grouped by reason in order of first appearance.
    unmapped: Vec<(String, Vec<String>)>,
    pub notes: Vec<String>,
    cited_mapped: usize,
    cited_unmapped: usize,
}

impl Out {
    pub fn get(&self, at: At) -> Option<&Value> {
        self.entries.iter().find(|e| e.at == at).map(|e| &e.value)
    }

    /// Set `at` from `src` unless an earlier key already set it (then `src` is listed as
    /// superseded).
    pub fn map(&mut self, src: &Src, at: At, value: Value, why: &str) {
        if self.get(at).is_some() {
            let reason = format!(
                "superseded: {}.{} was already set from an earlier key",
                at.0, at.1
            );
            return self.skip(src, &reason);
        }
        let why = if src.intent_only {
            format!("(never read by hmac-file-server 3.4; mapped for its intent) {why}")
        } else {
            why.to_owned()
        };
        self.cited_mapped += 1;
        self.entries.push(Entry {
            at,
            value,
            comments: vec![comment(&src.cite(), &why)],
        });
    }

    /// Set or overwrite `at` without an input key (a default kept, a cross-field fix).
    pub fn set(&mut self, at: At, value: Value, why: &str) {
        let line = comment("", why);
        match self.entries.iter_mut().find(|e| e.at == at) {
            Some(e) => {
                e.value = value;
                e.comments.push(line);
            }
            None => self.entries.push(Entry {
                at,
                value,
                comments: vec![line],
            }),
        }
    }

    /// Cite `src` next to the key it contributed to, or list it unmapped if that key was not set.
    pub fn attach(&mut self, src: &Src, at: At, why: &str) {
        match self.entries.iter_mut().find(|e| e.at == at) {
            Some(e) => {
                e.comments.push(comment(&src.cite(), why));
                self.cited_mapped += 1;
            }
            None => self.skip(src, &format!("{why}; nothing was mapped alongside it")),
        }
    }

    /// A comment at the top of a Sluice table citing `src` (it shapes that table, no one key).
    pub fn note(&mut self, section: &'static str, src: &Src, why: &str) {
        self.cited_mapped += 1;
        self.section_notes
            .push((section, comment(&src.cite(), why)));
    }

    /// List `src` among the keys with no Sluice equivalent, with the reason.
    pub fn skip(&mut self, src: &Src, why: &str) {
        self.cited_unmapped += 1;
        let cite = src.cite();
        match self.unmapped.iter_mut().find(|(r, _)| r == why) {
            Some((_, cites)) => cites.push(cite),
            None => self.unmapped.push((why.to_owned(), vec![cite])),
        }
    }

    fn render(&self) -> String {
        let mut s = String::from(HEADER);
        for section in SECTIONS {
            let entries: Vec<&Entry> = self.entries.iter().filter(|e| e.at.0 == *section).collect();
            let notes: Vec<&String> = self
                .section_notes
                .iter()
                .filter(|(t, _)| t == section)
                .map(|(_, n)| n)
                .collect();
            if !entries.is_empty() || !notes.is_empty() {
                s.push_str(&format!("\n[{section}]\n"));
            }
            for n in notes {
                s.push_str(n);
            }
            for e in entries {
                e.comments.iter().for_each(|c| s.push_str(c));
                s.push_str(&format!("{} = {}\n", e.at.1, e.value));
            }
            if *section == "auth" {
                for k in &self.keys {
                    s.push_str("\n[[auth.keys]]\n");
                    k.comments.iter().for_each(|c| s.push_str(c));
                    s.push_str(&format!("id = {}\n", Value::from(k.id)));
                    if k.secret.len() < 16 {
                        // Too short to be accepted: the new secret comes from the environment.
                        s.push_str(&format!(
                            "secret_env = {}\n",
                            Value::from(
                                format!("SLUICE_SECRET_{}", k.id.replace('-', "_").to_uppercase())
                                    .as_str()
                            )
                        ));
                    } else {
                        s.push_str(&format!("secret = {}\n", Value::from(k.secret.as_str())));
                    }
                }
            }
        }
        if !self.unmapped.is_empty() {
            s.push_str(UNMAPPED_HEADER);
            for (why, cites) in &self.unmapped {
                s.push_str("#\n");
                s.push_str(&comment("", why));
                for c in cites {
                    s.push_str(&format!("#   {c}\n"));
                }
            }
        }
        s
    }
}

const HEADER: &str = "\
# Sluice configuration migrated from hmac-file-server by `sluice migrate-config`.
# Check it with `sluice check-config FILE`; templates/config-adaptive.toml documents every key.
# Each key below names the hmac-file-server key it came from; Sluice's defaults apply to the
# rest. Keys with no Sluice equivalent are listed at the end with the reason.
";

const UNMAPPED_HEADER: &str = "
# -----------------------------------------------------------------------------------------------
# hmac-file-server keys with no Sluice equivalent, grouped by reason (nothing is dropped silently).
";

/// A comment block: `# <lead>: <text>` wrapped at 100 columns (`lead` is never broken), or a
/// plain paragraph when `lead` is empty.
fn comment(lead: &str, text: &str) -> String {
    let mut out = String::new();
    let (mut line, indent) = if lead.is_empty() {
        ("#".to_owned(), "#")
    } else {
        (format!("# {lead}:"), "#  ")
    };
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        if line.len() + 1 + word.len() > 100 && line.len() > 4 {
            out.push_str(&line);
            out.push('\n');
            line = indent.to_owned();
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out
}
