//! The inventory, `hosts.toml` in ctl's config directory (or the file
//! given with `--inventory`): named groups of targets usable as `@name`,
//! and per-host port and user.
//!
//! ```toml
//! [groups]
//! lab = "labpc[01-20],!labpc07"          # a target list, as on the command line
//! web = ["web[1-3]", "db1"]              # or a list of them
//! all = ["@lab", "@web"]                 # groups may name other groups
//!
//! [hosts."labpc[01-20]"]                 # a host or a range of hosts
//! port = 7000
//! user = "admin"
//! ```
//!
//! A host can match several entries (a range and a host of it, or two
//! ranges that overlap). Each setting comes from the most specific entry
//! that sets it: the one naming the fewest hosts, so a host's own entry
//! beats any range. The others still give what it leaves out, so
//! `user` from a range and `port` from the host's own entry combine. Two
//! entries of the same size that set one host's setting to different
//! values are an error naming both; the file's order never decides.
//!
//! This module also resolves a whole target list: it expands groups (and
//! finds cycles and unknown names), applies exclusions, fills in port and
//! user, and removes duplicates. A port or user written in the list wins
//! over the inventory's; the default port is the last resort. A user given
//! for the whole run (`-u`, [`Inventory::run_as`]) wins over both, and is
//! filled in with the rest, so the duplicates it makes are removed too.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rexec_protocol::DEFAULT_PORT;

use crate::broker_config::BrokerConfig;
use crate::config::ConfigDir;
use crate::nodeset;
use crate::sources::{self, GroupSource, SourceError, Upcall};
use crate::target::{self, ListError, ListItem, Operator, Target, TargetSpec};

/// The inventory file's name in ctl's config directory.
pub const FILE_NAME: &str = "hosts.toml";

/// Why a target list could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The inventory file cannot be read.
    #[error("inventory {}: cannot read it: {}", .path.display(), read_reason(.source))]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The inventory file is not TOML.
    #[error("inventory {}:{line}:{column}: not valid TOML: {reason}", .path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Where, counted from 1.
        line: usize,
        /// Where in the line, in characters counted from 1.
        column: usize,
        /// The TOML parser's words for what is wrong there, and the line,
        /// which names the key: one line.
        reason: String,
    },
    /// A key of the file has a value of the wrong kind or an unknown name.
    #[error("inventory {}: {key}: {reason}", .path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key, as TOML writes it (`groups.lab`, `hosts."n[1-4]".port`).
        key: String,
        /// What is wrong, in a sentence.
        reason: String,
    },
    /// Two entries of the same size give one host different values.
    #[error(
        "inventory {}: {} and {} both set {setting} for {host} ({} and {}); give {host} an entry of its own",
        .path.display(), .entries[0].0, .entries[1].0, .entries[0].1, .entries[1].1
    )]
    Conflict {
        /// The file.
        path: PathBuf,
        /// The host both entries name.
        host: String,
        /// `port` or `user`.
        setting: &'static str,
        /// Both entries' keys, as TOML writes them, and their values.
        entries: Box<[(String, String); 2]>,
    },
    /// The target list (or a group's) does not parse.
    #[error("{0}")]
    List(#[from] ListError),
    /// A group's members do not parse.
    #[error("inventory {}: groups.{}: {}", .path.display(), toml_key(.group), source)]
    InGroup {
        /// The file.
        path: PathBuf,
        /// The group.
        group: String,
        /// Why.
        source: Box<InventoryError>,
    },
    /// `@name` names no group.
    #[error("unknown group @{name} ({})", match .path {
        Some(path) => format!("not in {}", path.display()),
        None => "there is no inventory file".to_owned(),
    })]
    UnknownGroup {
        /// The group.
        name: String,
        /// The inventory it is missing from.
        path: Option<PathBuf>,
    },
    /// Groups that include each other.
    #[error("group cycle: {} (in {})", .groups.iter().map(|g| format!("@{g}")).collect::<Vec<_>>().join(" -> "), .path.display())]
    Cycle {
        /// The file.
        path: PathBuf,
        /// The groups, from the first to the one that names it again.
        groups: Vec<String>,
    },
    /// `@source:group` names a source the inventory does not have.
    #[error("unknown group source {name} in @{name}:… ({})", match .path {
        Some(path) => format!("no [sources.{name}] in {}", path.display()),
        None => "there is no inventory file".to_owned(),
    })]
    UnknownSource {
        /// The source.
        name: String,
        /// The inventory it is missing from.
        path: Option<PathBuf>,
    },
    /// A source's command gave no answer.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A source's command printed something that is not hosts.
    #[error(
        "group source {name}: its {what} command printed {word:?}, which is not a host or node set: {reason}"
    )]
    SourceOutput {
        /// The source.
        name: String,
        /// Which command.
        what: String,
        /// The word at fault.
        word: String,
        /// Why.
        reason: String,
    },
    /// A host file (`^FILE`) cannot be read or has a bad line.
    #[error("host file {}{}: {reason}", .path.display(), .line.map(|l| format!(":{l}")).unwrap_or_default())]
    HostFile {
        /// The file, as given.
        path: PathBuf,
        /// The line at fault, counted from 1; none when the file cannot be read.
        line: Option<usize>,
        /// What is wrong.
        reason: String,
    },
    /// Nothing is left to run on.
    #[error("the targets expand to no host")]
    Empty,
    /// The list expands to too many hosts.
    #[error("the targets expand to more than {} hosts", nodeset::MAX_NAMES)]
    TooMany,
}

/// Why a file could not be read, in our words rather than the OS's text.
fn read_reason(error: &std::io::Error) -> String {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::NotFound => "there is no such file".to_owned(),
        ErrorKind::PermissionDenied => "permission denied".to_owned(),
        ErrorKind::IsADirectory => "it is a directory".to_owned(),
        ErrorKind::InvalidData => "it is not UTF-8 text".to_owned(),
        other => other.to_string(),
    }
}

/// What the inventory says about one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSettings {
    /// The agent's port.
    pub port: Option<u16>,
    /// The user to run as.
    pub user: Option<String>,
}

/// Groups and per-host settings.
#[derive(Debug, Default)]
pub struct Inventory {
    path: Option<PathBuf>,
    /// Each group's members as one target list, so that an exclusion in
    /// one element of an array applies to the others too.
    groups: HashMap<String, String>,
    hosts: HashMap<String, HostSettings>,
    broker: Option<BrokerConfig>,
    sources: HashMap<String, GroupSource>,
    /// Where sources' answers are kept; none keeps nothing.
    source_cache: Option<PathBuf>,
    /// The user every target runs as (`-u`), whatever the list and the
    /// hosts' entries say.
    run_as: Option<String>,
}

/// A key as TOML writes it: bare when it can be, quoted otherwise.
fn toml_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

/// What kind of TOML value `value` is, for messages.
fn kind(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) | toml::Value::Float(_) => "a number",
        toml::Value::Boolean(_) => "true or false",
        toml::Value::Datetime(_) => "a date",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// What the TOML parser says is wrong at `line` (from 1) of `text`, as
/// one line, then that line quoted (at most 80 characters of it), as the
/// agent reports its own file: `duplicate key: `[hosts.n1]``.
fn syntax_reason(text: &str, line: usize, message: &str) -> String {
    let reason = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let quoted = text
        .lines()
        .nth(line.saturating_sub(1))
        .unwrap_or("")
        .trim();
    match quoted.chars().count() {
        0 => reason,
        1..=80 => format!("{reason}: `{quoted}`"),
        _ => format!(
            "{reason}: `{}…`",
            quoted.chars().take(80).collect::<String>()
        ),
    }
}

/// Line and column (both from 1, the column in characters) of byte `at`.
fn line_column(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// One setting of one host, with the entry it came from.
struct Chosen<T> {
    value: T,
    /// How many hosts that entry names: fewer is more specific.
    size: usize,
    key: String,
}

/// Keeps the more specific of `slot` and `new`. An equally specific
/// entry with another value is a conflict: the error holds the old
/// entry's key and value.
fn choose<T: PartialEq + ToString>(
    slot: &mut Option<Chosen<T>>,
    new: Chosen<T>,
) -> Result<(), (String, String)> {
    match slot {
        Some(old) if old.size < new.size => Ok(()),
        Some(old) if old.size == new.size => {
            if old.value == new.value {
                Ok(())
            } else {
                Err((old.key.clone(), old.value.to_string()))
            }
        }
        _ => {
            *slot = Some(new);
            Ok(())
        }
    }
}

impl Inventory {
    /// The inventory in ctl's config directory.
    pub fn default_path(config: &ConfigDir) -> PathBuf {
        config.path().join(FILE_NAME)
    }

    /// Loads `explicit` (which must exist), or else the default file if it
    /// exists, or else an empty inventory.
    ///
    /// # Errors
    /// When the file cannot be read or does not parse.
    pub fn load(explicit: Option<&Path>, config: &ConfigDir) -> Result<Inventory, InventoryError> {
        let (path, must_exist) = match explicit {
            Some(path) => (path.to_path_buf(), true),
            None => (Inventory::default_path(config), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => Inventory::parse(&text, path).map(|mut inventory| {
                inventory.source_cache = Some(config.source_cache());
                inventory
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                Ok(Inventory::default())
            }
            Err(source) => Err(InventoryError::Read { path, source }),
        }
    }

    /// Parses the text of an inventory file found at `path`.
    ///
    /// # Errors
    /// When the text is not TOML, a key has a value of the wrong kind or
    /// an unknown name, a host key is not a host or range, or two equally
    /// specific entries disagree about a host.
    pub fn parse(text: &str, path: PathBuf) -> Result<Inventory, InventoryError> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let (line, column) = e
                .span()
                .map_or((1, 1), |span| line_column(text, span.start));
            InventoryError::Syntax {
                path: path.clone(),
                line,
                column,
                reason: syntax_reason(text, line, e.message()),
            }
        })?;
        let invalid = |key: String, reason: String| InventoryError::Invalid {
            path: path.clone(),
            key,
            reason,
        };
        let mut groups = HashMap::new();
        let mut sources = HashMap::new();
        let mut entries = Vec::new();
        let mut broker = None;
        for (section, value) in table {
            let toml::Value::Table(items) = value else {
                return Err(invalid(
                    toml_key(&section),
                    format!("expected a table ([{section}]), found {}", kind(&value)),
                ));
            };
            match section.as_str() {
                "groups" => {
                    for (name, members) in items {
                        let key = format!("groups.{}", toml_key(&name));
                        groups.insert(name, group_members(members).map_err(|r| invalid(key, r))?);
                    }
                }
                "hosts" => {
                    for (hosts, settings) in items {
                        let key = format!("hosts.{}", toml_key(&hosts));
                        let settings =
                            host_settings(settings, &key).map_err(|(k, r)| invalid(k, r))?;
                        let names = host_names(&hosts).map_err(|r| invalid(key.clone(), r))?;
                        entries.push((key, names, settings));
                    }
                }
                "broker" => {
                    let base = path.parent().unwrap_or(Path::new("."));
                    broker = Some(
                        crate::broker_config::parse_section(toml::Value::Table(items), base)
                            .map_err(|(k, r)| invalid(k, r))?,
                    );
                }
                "sources" => {
                    for (name, fields) in items {
                        let key = format!("sources.{}", toml_key(&name));
                        let source =
                            group_source(&name, fields, &key).map_err(|(k, r)| invalid(k, r))?;
                        sources.insert(name, source);
                    }
                }
                _ => {
                    return Err(invalid(
                        toml_key(&section),
                        "unknown section (an inventory has [groups], [hosts], [sources] and [broker])"
                            .to_owned(),
                    ));
                }
            }
        }
        let hosts = merge(&path, entries)?;
        Ok(Inventory {
            path: Some(path),
            groups,
            hosts,
            broker,
            sources,
            source_cache: None,
            run_as: None,
        })
    }

    /// The `[broker]` section, if the file has one.
    pub fn broker(&self) -> Option<&BrokerConfig> {
        self.broker.as_ref()
    }

    /// The settings for `host`, if the inventory has any.
    pub fn host(&self, host: &str) -> Option<&HostSettings> {
        self.hosts.get(host)
    }

    /// Resolves a target list plus exclusion lists (`-x`) into the targets
    /// to run on, in the order written, without duplicates.
    ///
    /// # Errors
    /// Bad syntax, an unknown group, a group cycle, or no host left.
    pub fn resolve(&self, list: &str, exclude: &[String]) -> Result<Vec<Target>, InventoryError> {
        let targets = self.resolve_any(list, exclude)?;
        if targets.is_empty() {
            return Err(InventoryError::Empty);
        }
        Ok(targets)
    }

    /// [`Inventory::resolve`], where no host left is an empty list (`ctl
    /// hosts --count 'a&b'` is 0, as `nodeset -c` says).
    ///
    /// # Errors
    /// Bad syntax, an unknown group or a group cycle.
    pub fn resolve_any(
        &self,
        list: &str,
        exclude: &[String],
    ) -> Result<Vec<Target>, InventoryError> {
        let mut stack = Vec::new();
        let mut targets = self.expand(list, &mut stack)?;
        for list in exclude {
            let excluded = self.excluded(list, &mut stack)?;
            targets.retain(|t| !excluded.removes(t));
        }
        Ok(targets)
    }

    /// Makes every target resolved from now on run as `user` (`-u`),
    /// whatever the list and the inventory say: `root@h,h` is then one
    /// host, run once, and exclusions and `&` see the user it runs as.
    pub fn run_as(&mut self, user: Option<String>) {
        self.run_as = user;
    }

    /// Resolves one spec: the user of [`Inventory::run_as`], then the
    /// list's port and user, then the inventory's, then the defaults.
    pub fn complete(&self, spec: TargetSpec) -> Target {
        let settings = self.host(&spec.host);
        Target {
            user: self
                .run_as
                .clone()
                .or(spec.user)
                .or_else(|| settings.and_then(|s| s.user.clone())),
            port: spec
                .port
                .or_else(|| settings.and_then(|s| s.port))
                .unwrap_or(DEFAULT_PORT),
            host: spec.host,
        }
    }

    /// Evaluates a target list from left to right, as ClusterShell reads
    /// its extended node sets: each term's hosts are added (`,`), removed
    /// (`!`), intersected (`&`) or xor-ed (`^`) with what the terms before
    /// it chose. Exclusion items (`,!x`) are ours and apply last, to the
    /// whole list, whatever their place.
    fn expand(&self, list: &str, stack: &mut Vec<String>) -> Result<Vec<Target>, InventoryError> {
        let mut chosen: Vec<Target> = Vec::new();
        let mut exclusions: Vec<TargetSpec> = Vec::new();
        for term in target::parse_list(list)? {
            if term.exclude {
                self.exclusions(term.item, &mut exclusions, stack)?;
                continue;
            }
            match term.operator {
                Operator::Union => chosen.extend(self.members(term.item, stack)?),
                Operator::Difference => {
                    let mut removed = Vec::new();
                    self.exclusions(term.item, &mut removed, stack)?;
                    chosen.retain(|t| !removed.iter().any(|x| x.excludes(t)));
                }
                Operator::Intersection => {
                    let members = self.members(term.item, stack)?;
                    let other = agents(&members);
                    chosen.retain(|t| other.contains(&(t.host.as_str(), t.port)));
                }
                Operator::Xor => {
                    let members = self.members(term.item, stack)?;
                    let (mine, other) = (agents(&chosen), agents(&members));
                    let added: Vec<Target> = members
                        .iter()
                        .filter(|t| !mine.contains(&(t.host.as_str(), t.port)))
                        .cloned()
                        .collect();
                    chosen.retain(|t| !other.contains(&(t.host.as_str(), t.port)));
                    chosen.extend(added);
                }
            }
            if chosen.len() > nodeset::MAX_NAMES {
                return Err(InventoryError::TooMany);
            }
        }
        chosen.retain(|t| !exclusions.iter().any(|x| x.excludes(t)));
        let mut seen = HashSet::new();
        chosen.retain(|t| seen.insert(t.clone()));
        Ok(chosen)
    }

    /// The targets one item names, completed from the inventory.
    fn members(
        &self,
        item: ListItem,
        stack: &mut Vec<String>,
    ) -> Result<Vec<Target>, InventoryError> {
        match item {
            ListItem::Hosts(specs) => Ok(specs.into_iter().map(|s| self.complete(s)).collect()),
            ListItem::Group { name, user } => {
                let mut members = self.group(&name, stack)?;
                if let Some(user) = user {
                    for member in &mut members {
                        member.user = Some(user.clone());
                    }
                }
                Ok(members)
            }
            ListItem::File(path) => Ok(host_file(&path)?
                .into_iter()
                .map(|s| self.complete(s))
                .collect()),
        }
    }

    /// What an excluded item (`!ITEM`, or an item of a `-x` list) removes:
    /// hosts as written (a port or user, when given, must match too), or
    /// the members of a group wherever they run on the same host and port.
    fn exclusions(
        &self,
        item: ListItem,
        exclusions: &mut Vec<TargetSpec>,
        stack: &mut Vec<String>,
    ) -> Result<(), InventoryError> {
        match item {
            ListItem::Hosts(specs) => exclusions.extend(specs),
            ListItem::File(path) => exclusions.extend(host_file(&path)?),
            ListItem::Group { name, user } => {
                let members = self.group(&name, stack)?;
                exclusions.extend(members.into_iter().map(|t| TargetSpec {
                    user: user.clone(),
                    host: t.host,
                    port: Some(t.port),
                }));
            }
        }
        Ok(())
    }

    /// What a `-x LIST` removes: LIST read with the algebra of
    /// [`Inventory::expand`], each item matching as an exclusion does (a
    /// port or user only when written), so `-x 'n[1-4]!n3'` removes n1, n2
    /// and n4 on whatever port or user they run.
    fn excluded(&self, list: &str, stack: &mut Vec<String>) -> Result<Excluded, InventoryError> {
        let mut terms = Vec::new();
        for term in target::parse_list(list)? {
            let mut specs = Vec::new();
            self.exclusions(term.item, &mut specs, stack)?;
            let mut by_host: HashMap<String, Vec<TargetSpec>> = HashMap::new();
            for spec in specs {
                by_host.entry(spec.host.clone()).or_default().push(spec);
            }
            terms.push((term.operator, term.exclude, by_host));
        }
        Ok(Excluded { terms })
    }

    /// Every group's name as a target list would write it: the
    /// inventory's `@name`s, then `@source:group` for each source that
    /// has a `list` command, sorted.
    ///
    /// # Errors
    /// A source's `list` command that gives no answer.
    pub fn group_names(&self) -> Result<Vec<String>, InventoryError> {
        let mut names: Vec<String> = self.groups.keys().map(|g| format!("@{g}")).collect();
        names.sort();
        let mut sources: Vec<&GroupSource> =
            self.sources.values().filter(|s| s.list.is_some()).collect();
        sources.sort_by(|a, b| a.name.cmp(&b.name));
        for source in sources {
            let mut listed: Vec<String> = self
                .ask(source, Upcall::List, None)?
                .split_whitespace()
                .map(|g| format!("@{}:{g}", source.name))
                .collect();
            listed.sort();
            listed.dedup();
            names.extend(listed);
        }
        Ok(names)
    }

    fn ask(
        &self,
        source: &GroupSource,
        upcall: Upcall,
        group: Option<&str>,
    ) -> Result<String, InventoryError> {
        let path = self.path.clone().unwrap_or_default();
        Ok(source.ask(upcall, group, self.source_cache.as_deref(), &path)?)
    }

    /// The hosts of `@source:group`, or of `@source:*` (its `all`
    /// command, or else every group its `list` names).
    fn source_group(&self, source: &str, group: &str) -> Result<Vec<Target>, InventoryError> {
        let Some(source) = self.sources.get(source) else {
            return Err(InventoryError::UnknownSource {
                name: source.to_owned(),
                path: self.path.clone(),
            });
        };
        let mut printed = Vec::new();
        if group != "*" {
            let what = format!("map (GROUP={group})");
            printed.push((what, self.ask(source, Upcall::Map, Some(group))?));
        } else if source.all.is_some() || source.list.is_none() {
            printed.push(("all".to_owned(), self.ask(source, Upcall::All, None)?));
        } else {
            for group in self.ask(source, Upcall::List, None)?.split_whitespace() {
                let what = format!("map (GROUP={group})");
                printed.push((what, self.ask(source, Upcall::Map, Some(group))?));
            }
        }
        let mut targets = Vec::new();
        for (what, output) in printed {
            for word in output.split_whitespace() {
                let bad = |reason: String| InventoryError::SourceOutput {
                    name: source.name.clone(),
                    what: what.clone(),
                    word: word.chars().take(80).collect(),
                    reason,
                };
                for term in target::parse_list(word).map_err(|e| bad(e.to_string()))? {
                    match (term.operator, term.exclude, term.item) {
                        (Operator::Union, false, ListItem::Hosts(specs)) => {
                            targets.extend(specs.into_iter().map(|s| self.complete(s)));
                        }
                        _ => return Err(bad("a source prints hosts and node sets only".into())),
                    }
                }
                if targets.len() > nodeset::MAX_NAMES {
                    return Err(InventoryError::TooMany);
                }
            }
        }
        Ok(targets)
    }

    fn group(&self, name: &str, stack: &mut Vec<String>) -> Result<Vec<Target>, InventoryError> {
        if let Some((source, group)) = name.split_once(':') {
            return self.source_group(source, group);
        }
        if let Some(start) = stack.iter().position(|g| g == name) {
            let mut groups = stack[start..].to_vec();
            groups.push(name.to_owned());
            return Err(InventoryError::Cycle {
                path: self.path.clone().unwrap_or_default(),
                groups,
            });
        }
        let Some(list) = self.groups.get(name) else {
            return Err(InventoryError::UnknownGroup {
                name: name.to_owned(),
                path: self.path.clone(),
            });
        };
        if list.is_empty() {
            return Ok(Vec::new());
        }
        stack.push(name.to_owned());
        let members = match self.expand(list, stack) {
            Ok(targets) => targets,
            // Keep the innermost group's context; a cycle names them all.
            Err(e @ (InventoryError::InGroup { .. } | InventoryError::Cycle { .. })) => {
                return Err(e);
            }
            Err(e) => {
                return Err(InventoryError::InGroup {
                    path: self.path.clone().unwrap_or_default(),
                    group: name.to_owned(),
                    source: Box::new(e),
                });
            }
        };
        stack.pop();
        Ok(members)
    }
}

/// A `-x` list, kept as its terms: whether it names a target is decided
/// term by term, from left to right, as [`Inventory::expand`] combines
/// hosts, with each term's hosts matched as exclusions match.
struct Excluded {
    /// Each term's operator, whether it is an exclusion item of its own
    /// (`,!x`: left out of what the list removes), and its hosts by name.
    terms: Vec<(Operator, bool, HashMap<String, Vec<TargetSpec>>)>,
}

impl Excluded {
    /// Whether the list names `target`.
    fn removes(&self, target: &Target) -> bool {
        let mut named = false;
        let mut spared = false;
        for (operator, exclude, by_host) in &self.terms {
            let hit = by_host
                .get(&target.host)
                .is_some_and(|specs| specs.iter().any(|s| s.excludes(target)));
            if *exclude {
                spared |= hit;
                continue;
            }
            named = match operator {
                Operator::Union => named || hit,
                Operator::Difference => named && !hit,
                Operator::Intersection => named && hit,
                Operator::Xor => named != hit,
            };
        }
        named && !spared
    }
}

/// A group's members as one target list.
fn group_members(members: toml::Value) -> Result<String, String> {
    let expected = "expected a target list (a string such as \"labpc[01-20]\") or an array of them";
    match members {
        toml::Value::String(list) => Ok(list),
        toml::Value::Array(lists) => lists
            .into_iter()
            .map(|item| match item {
                toml::Value::String(list) => Ok(list),
                other => Err(format!("{expected}, found {} in the array", kind(&other))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|lists| lists.join(",")),
        other => Err(format!("{expected}, found {}", kind(&other))),
    }
}

/// The fields of `value`, which at `key` must be a table of `what`.
fn table_of(value: toml::Value, key: &str, what: &str) -> Result<toml::Table, (String, String)> {
    match value {
        toml::Value::Table(fields) => Ok(fields),
        other => Err((
            key.to_owned(),
            format!("expected a table of {what}, found {}", kind(&other)),
        )),
    }
}

/// The settings of one `[hosts.KEY]` entry; an error names the key at fault.
fn host_settings(value: toml::Value, key: &str) -> Result<HostSettings, (String, String)> {
    let fields = table_of(value, key, "settings (port, user)")?;
    let mut settings = HostSettings::default();
    for (field, value) in fields {
        let at = format!("{key}.{}", toml_key(&field));
        match (field.as_str(), value) {
            ("port", toml::Value::Integer(port)) => match u16::try_from(port) {
                Ok(port) if port > 0 => settings.port = Some(port),
                _ => return Err((at, "a port is a number from 1 to 65535".to_owned())),
            },
            ("port", other) => {
                return Err((
                    at,
                    format!("a port is a number from 1 to 65535, found {}", kind(&other)),
                ));
            }
            ("user", toml::Value::String(user)) => {
                if let Some(reason) = target::bad_user_name(&user) {
                    return Err((at, format!("{user:?} is not a user name: {reason}")));
                }
                if user.chars().any(|c| c.is_whitespace() || c == '@') {
                    return Err((at, format!("{user:?} is not a user name")));
                }
                settings.user = Some(user);
            }
            ("user", other) => {
                return Err((at, format!("a user is a string, found {}", kind(&other))));
            }
            _ => {
                return Err((
                    at,
                    "unknown setting (a host has a port and a user)".to_owned(),
                ));
            }
        }
    }
    Ok(settings)
}

/// One `[sources.NAME]` table; an error names the key at fault.
fn group_source(
    name: &str,
    value: toml::Value,
    key: &str,
) -> Result<GroupSource, (String, String)> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_alphanumeric() || "_-.".contains(c))
    {
        return Err((
            key.to_owned(),
            "a source's name holds letters, digits, '_', '-' and '.' only".to_owned(),
        ));
    }
    let fields = table_of(value, key, "commands (map, list, all)")?;
    let mut source = GroupSource {
        name: name.to_owned(),
        timeout: sources::DEFAULT_TIMEOUT,
        ..GroupSource::default()
    };
    for (field, value) in fields {
        let at = format!("{key}.{}", toml_key(&field));
        match (field.as_str(), value) {
            ("map" | "list" | "all", toml::Value::String(command)) => {
                let slot = match field.as_str() {
                    "map" => &mut source.map,
                    "list" => &mut source.list,
                    _ => &mut source.all,
                };
                *slot = Some(command);
            }
            ("map" | "list" | "all", other) => {
                return Err((
                    at,
                    format!("expected a shell command line, found {}", kind(&other)),
                ));
            }
            ("cache_time" | "timeout", toml::Value::String(text)) => {
                let duration = humantime::parse_duration(&text)
                    .ok()
                    .filter(|d| *d <= Duration::from_secs(366 * 24 * 3600))
                    .ok_or_else(|| {
                        (
                            at.clone(),
                            format!("{text:?} is not a duration (500ms, 30s, 5m, 1h) of at most 366 days"),
                        )
                    })?;
                if field == "timeout" {
                    if duration.is_zero() {
                        return Err((at, "a source's timeout must be longer than 0".to_owned()));
                    }
                    source.timeout = duration;
                } else {
                    source.cache_time = duration;
                }
            }
            ("cache_time" | "timeout", other) => {
                return Err((
                    at,
                    format!(
                        "expected a quoted duration (\"5m\"), found {}",
                        kind(&other)
                    ),
                ));
            }
            _ => {
                return Err((
                    at,
                    "unknown key (a source has map, list, all, cache_time and timeout)".to_owned(),
                ));
            }
        }
    }
    if source.map.is_none() && source.all.is_none() {
        return Err((
            key.to_owned(),
            "a source needs a map command (and may have list and all)".to_owned(),
        ));
    }
    Ok(source)
}

/// The hosts a `[hosts]` key names, its operators and exclusions applied.
fn host_names(key: &str) -> Result<Vec<String>, String> {
    let terms = target::parse_list(key).map_err(|e| e.to_string())?;
    let mut chosen: Vec<String> = Vec::new();
    let mut excluded = HashSet::new();
    for term in terms {
        let ListItem::Hosts(specs) = term.item else {
            return Err(
                "a [hosts] key names hosts or ranges (labpc07, \"labpc[01-20]\"), not groups"
                    .to_owned(),
            );
        };
        if specs.iter().any(|s| s.port.is_some() || s.user.is_some()) {
            return Err(
                "a [hosts] key names hosts only; give the port and user inside the entry"
                    .to_owned(),
            );
        }
        let names: Vec<String> = specs.into_iter().map(|s| s.host).collect();
        if term.exclude {
            excluded.extend(names);
            continue;
        }
        let named: HashSet<&String> = names.iter().collect();
        match term.operator {
            Operator::Union => chosen.extend(names.iter().cloned()),
            Operator::Difference => chosen.retain(|h| !named.contains(h)),
            Operator::Intersection => chosen.retain(|h| named.contains(h)),
            Operator::Xor => {
                let mine: HashSet<String> = chosen.iter().cloned().collect();
                chosen.retain(|h| !named.contains(h));
                chosen.extend(names.iter().filter(|h| !mine.contains(*h)).cloned());
            }
        }
    }
    chosen.retain(|h| !excluded.contains(h));
    let mut seen = HashSet::new();
    chosen.retain(|h| seen.insert(h.clone()));
    Ok(chosen)
}

/// The `(host, port)` of each target: what `&` and `^` compare, since a
/// user is how a host is used, not which host it is.
fn agents(targets: &[Target]) -> HashSet<(&str, u16)> {
    targets.iter().map(|t| (t.host.as_str(), t.port)).collect()
}

/// The hosts of a host file (`^FILE`, as pdsh's `-w ^FILE`): one host or
/// node set per line; `#` starts a comment, blank lines are skipped.
fn host_file(path: &str) -> Result<Vec<TargetSpec>, InventoryError> {
    let text = std::fs::read_to_string(path).map_err(|source| InventoryError::HostFile {
        path: PathBuf::from(path),
        line: None,
        reason: read_reason(&source),
    })?;
    let mut specs = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line
            .split_once('#')
            .map_or(line, |(before, _)| before)
            .trim();
        if line.is_empty() {
            continue;
        }
        let bad = |reason: String| InventoryError::HostFile {
            path: PathBuf::from(path),
            line: Some(number + 1),
            reason,
        };
        for term in target::parse_list(line).map_err(|e| bad(e.to_string()))? {
            match (term.operator, term.exclude, term.item) {
                (Operator::Union, false, ListItem::Hosts(hosts)) => specs.extend(hosts),
                _ => {
                    return Err(bad(
                        "a host file lists hosts or node sets, one per line, not groups, files or operators"
                            .to_owned(),
                    ));
                }
            }
        }
        if specs.len() > nodeset::MAX_NAMES {
            return Err(InventoryError::TooMany);
        }
    }
    Ok(specs)
}

/// Each host's settings, each field from the most specific entry that
/// sets it (see the module's docs).
fn merge(
    path: &Path,
    entries: Vec<(String, Vec<String>, HostSettings)>,
) -> Result<HashMap<String, HostSettings>, InventoryError> {
    #[derive(Default)]
    struct Slots {
        port: Option<Chosen<u16>>,
        user: Option<Chosen<String>>,
    }
    let mut slots: HashMap<String, Slots> = HashMap::new();
    for (key, names, settings) in entries {
        let size = names.len();
        for host in names {
            let slot = slots.entry(host.clone()).or_default();
            let conflict = |setting: &'static str, value: String| {
                let path = path.to_path_buf();
                let host = host.clone();
                let key = key.clone();
                move |(old_key, old_value): (String, String)| {
                    // Both keys in sorted order, so the message is stable.
                    let mut both = [(old_key, old_value), (key, value)];
                    both.sort();
                    InventoryError::Conflict {
                        path,
                        host,
                        setting,
                        entries: Box::new(both),
                    }
                }
            };
            if let Some(port) = settings.port {
                let new = Chosen {
                    value: port,
                    size,
                    key: key.clone(),
                };
                choose(&mut slot.port, new).map_err(conflict("port", port.to_string()))?;
            }
            if let Some(user) = &settings.user {
                let new = Chosen {
                    value: user.clone(),
                    size,
                    key: key.clone(),
                };
                choose(&mut slot.user, new).map_err(conflict("user", user.clone()))?;
            }
        }
    }
    Ok(slots
        .into_iter()
        .map(|(host, slot)| {
            (
                host,
                HostSettings {
                    port: slot.port.map(|c| c.value),
                    user: slot.user.map(|c| c.value),
                },
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[groups]
lab = "pc[01-05],!pc03"
web = ["web[1-2]", "db1"]
all = ["@lab", "@web", "!db1"]
loop-a = "@loop-b"
loop-b = "x,@loop-a"
broken = "n[1-x]"
lost = "@nowhere"

[hosts."pc[01-02]"]
port = 7000
user = "admin"

[hosts.db1]
port = 9
"#;

    fn inventory() -> Inventory {
        Inventory::parse(EXAMPLE, PathBuf::from("hosts.toml")).unwrap()
    }

    fn shown(targets: &[Target]) -> Vec<String> {
        targets.iter().map(Target::to_string).collect()
    }

    #[test]
    fn groups_expand_with_settings_and_exclusions() {
        let inv = inventory();
        assert_eq!(
            shown(&inv.resolve("@lab", &[]).unwrap()),
            [
                "admin@pc01:7000",
                "admin@pc02:7000",
                "pc04:7722",
                "pc05:7722"
            ]
        );
        assert_eq!(
            shown(&inv.resolve("@all,bob@pc01:1", &["pc05".into()]).unwrap()),
            [
                "admin@pc01:7000",
                "admin@pc02:7000",
                "pc04:7722",
                "web1:7722",
                "web2:7722",
                "bob@pc01:1"
            ]
        );
        // A group's own exclusion does not stop the host being named again.
        assert_eq!(
            shown(&inv.resolve("@lab,pc03", &[]).unwrap())
                .last()
                .unwrap(),
            "pc03:7722"
        );
        assert_eq!(
            shown(&inv.resolve("pc[01-05],!@lab", &[]).unwrap()),
            ["pc03:7722"]
        );
    }

    #[test]
    fn dash_x_removes_what_the_same_bang_item_removes() {
        let inv = inventory();
        let list = "a:7001,b,bob@c,alice@c,pc01,d:7002";
        for excluded in [
            "a", "bob@c", "c", "pc01", "d:7002", "d:7003", "@lab", "b,@web",
        ] {
            let bang: String = excluded
                .split(',')
                .map(|item| format!(",!{item}"))
                .collect();
            assert_eq!(
                shown(&inv.resolve(list, &[excluded.into()]).unwrap()),
                shown(&inv.resolve(&format!("{list}{bang}"), &[]).unwrap()),
                "-x {excluded}"
            );
        }
        // A host named without a port goes wherever it runs; a user or a
        // port, when given, must match too.
        assert_eq!(
            shown(&inv.resolve(list, &["a".into(), "bob@c".into()]).unwrap()),
            ["b:7722", "alice@c:7722", "admin@pc01:7000", "d:7002"]
        );
    }

    /// `-u` used to be applied after duplicates were removed, so
    /// `-u root 'root@h,h'` ran twice on h.
    #[test]
    fn the_run_s_user_is_given_before_duplicates_are_removed() {
        let mut inv = inventory();
        inv.run_as(Some("root".into()));
        assert_eq!(
            shown(&inv.resolve("root@h,h,bob@h,@lab", &[]).unwrap()),
            [
                "root@h:7722",
                "root@pc01:7000",
                "root@pc02:7000",
                "root@pc04:7722",
                "root@pc05:7722"
            ]
        );
        // Exclusions see the user the hosts run as.
        assert_eq!(
            shown(&inv.resolve("g,h", &["root@h".into()]).unwrap()),
            ["root@g:7722"]
        );
        assert_eq!(
            shown(&inv.resolve("h", &["bob@h".into()]).unwrap()),
            ["root@h:7722"]
        );
    }

    /// `-x` used to take each term of its list as one more exclusion,
    /// whatever its operator: `-x 'n[1-4]!n3'` removed n3 too.
    #[test]
    fn dash_x_reads_its_list_with_the_operators() {
        let inv = inventory();
        for (excluded, left) in [
            ("n[1-4]!n3", "n3 n5"),
            ("n[1-4]&n[4-9]", "n1 n2 n3 n5"),
            ("n[1-3]^n[2-4]", "n2 n3 n5"),
            ("n[1-5]!n[2-3]&n[3-5]", "n1 n2 n3"),
            ("n[1-4],!n2", "n2 n5"),
            ("!n2,n[1-4]", "n2 n5"),
            // A port or user, when written, must match; else any.
            ("n[1-5]!n2:7722", "n2"),
            ("n[1-4]!n2:7000", "n5"),
            ("n[1-5]&bob@n[1-5]", "n1 n2 n3 n4 n5"),
        ] {
            let shown: Vec<String> = inv
                .resolve("n[1-5]", &[excluded.into()])
                .unwrap()
                .iter()
                .map(Target::minimal)
                .collect();
            assert_eq!(shown.join(" "), left, "-x {excluded}");
        }
        // A group in the list removes its members on their own ports.
        let shown: Vec<String> = inv
            .resolve("pc01:7001,pc[02-05]", &["@lab&pc[01-04]".into()])
            .unwrap()
            .iter()
            .map(Target::minimal)
            .collect();
        assert_eq!(shown, ["admin@pc01:7001", "pc03", "pc05"]);
    }

    #[test]
    fn cycles_unknown_groups_and_empty_results_are_errors() {
        let inv = inventory();
        let cycle = inv.resolve("@loop-a", &[]).unwrap_err().to_string();
        assert_eq!(
            cycle,
            "group cycle: @loop-a -> @loop-b -> @loop-a (in hosts.toml)"
        );
        let unknown = inv.resolve("@lost", &[]).unwrap_err().to_string();
        assert_eq!(
            unknown,
            "inventory hosts.toml: groups.lost: unknown group @nowhere (not in hosts.toml)"
        );
        let broken = inv.resolve("@broken", &[]).unwrap_err().to_string();
        assert_eq!(
            broken,
            "inventory hosts.toml: groups.broken: unexpected 'x' in a range \
             (ranges look like [1-5,7] or [01-10]) at character 5 of \"n[1-x]\""
        );
        assert!(matches!(
            inv.resolve("pc01", &["pc01".into()]),
            Err(InventoryError::Empty)
        ));
        let none = Inventory::default().resolve("@lab", &[]).unwrap_err();
        assert!(none.to_string().contains("no inventory file"), "{none}");
    }

    fn error(text: &str) -> String {
        Inventory::parse(text, PathBuf::from("h.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn every_bad_file_is_one_line_naming_the_file_and_the_key() {
        for (text, message) in [
            (
                "[groups]\nlab = 5\n",
                "inventory h.toml: groups.lab: expected a target list (a string such as \
                 \"labpc[01-20]\") or an array of them, found a number",
            ),
            (
                "[groups]\nweb = [\"a\", 3]\n",
                "inventory h.toml: groups.web: expected a target list (a string such as \
                 \"labpc[01-20]\") or an array of them, found a number in the array",
            ),
            (
                "groups = \"a\"\n",
                "inventory h.toml: groups: expected a table ([groups]), found a string",
            ),
            (
                "[host.a]\nport = 1\n",
                "inventory h.toml: host: unknown section (an inventory has [groups], [hosts], [sources] and [broker])",
            ),
            (
                "[hosts.a]\nprot = 1\n",
                "inventory h.toml: hosts.a.prot: unknown setting (a host has a port and a user)",
            ),
            (
                "[hosts.a]\nport = 70000\n",
                "inventory h.toml: hosts.a.port: a port is a number from 1 to 65535",
            ),
            (
                "[hosts.a]\nport = \"7000\"\n",
                "inventory h.toml: hosts.a.port: a port is a number from 1 to 65535, found a string",
            ),
            (
                "[hosts.a]\nuser = 1\n",
                "inventory h.toml: hosts.a.user: a user is a string, found a number",
            ),
            (
                "[hosts.a]\nuser = \"../../esc\"\n",
                "inventory h.toml: hosts.a.user: \"../../esc\" is not a user name: \
                 a user name cannot hold '/' or a control character",
            ),
            (
                "[hosts.a]\nuser = \"..\"\n",
                "inventory h.toml: hosts.a.user: \"..\" is not a user name: \
                 a user name cannot be '.' or '..'",
            ),
            (
                "[hosts]\na = 7000\n",
                "inventory h.toml: hosts.a: expected a table of settings (port, user), found a number",
            ),
            (
                "[hosts.\"n[1-\"]\nport = 1\n",
                "inventory h.toml: hosts.\"n[1-\": '[' is never closed at character 2 of \"n[1-\"",
            ),
            (
                "[hosts.\"@lab\"]\nport = 1\n",
                "inventory h.toml: hosts.\"@lab\": a [hosts] key names hosts or ranges \
                 (labpc07, \"labpc[01-20]\"), not groups",
            ),
            (
                "[groups]\nlab = \"a\"\n\n[hosts.a\nport = 1\n",
                "inventory h.toml:4:9: not valid TOML: unclosed table, expected `]`: `[hosts.a`",
            ),
            // The parser's reason used to be dropped: a duplicate table
            // read as a matter of quotes and brackets.
            (
                "[hosts.n1]\nport = 1\n[hosts.n1]\nport = 2\n",
                "inventory h.toml:3:8: not valid TOML: duplicate key: `[hosts.n1]`",
            ),
            (
                "[groups]\nlab = \"a\n",
                "inventory h.toml:2:9: not valid TOML: invalid basic string, expected `\"`: `lab = \"a`",
            ),
            (
                "[groups]\nlab = \n",
                "inventory h.toml:2:7: not valid TOML: string values must be quoted, \
                 expected literal string: `lab =`",
            ),
        ] {
            let shown = error(text);
            assert_eq!(shown, message, "{text:?}");
            assert!(!shown.contains('\n'), "{shown}");
        }
    }

    fn settings(text: &str, host: &str) -> (Option<u16>, Option<String>) {
        let inv = Inventory::parse(text, PathBuf::from("h.toml")).unwrap();
        let s = inv.host(host).cloned().unwrap_or_default();
        (s.port, s.user)
    }

    #[test]
    fn a_host_entry_beats_its_range_field_by_field() {
        let text = "[hosts.\"labpc[01-20]\"]\nport = 7000\nuser = \"lab\"\n\n\
                    [hosts.labpc07]\nport = 7723\n";
        assert_eq!(settings(text, "labpc07"), (Some(7723), Some("lab".into())));
        assert_eq!(settings(text, "labpc06"), (Some(7000), Some("lab".into())));
        // The order of the entries in the file does not matter.
        let text = "[hosts.labpc07]\nport = 7723\n\n\
                    [hosts.\"labpc[01-20]\"]\nport = 7000\nuser = \"lab\"\n";
        assert_eq!(settings(text, "labpc07"), (Some(7723), Some("lab".into())));
    }

    #[test]
    fn the_smaller_of_two_overlapping_ranges_wins() {
        let text = "[hosts.\"n[1-10]\"]\nport = 7000\nuser = \"a\"\n\n\
                    [hosts.\"n[5-6]\"]\nport = 7001\n";
        assert_eq!(settings(text, "n5"), (Some(7001), Some("a".into())));
        assert_eq!(settings(text, "n7"), (Some(7000), Some("a".into())));
        // Same size, same value: no conflict.
        let same = "[hosts.\"n[1-2]\"]\nport = 1\n\n[hosts.\"n[2-3]\"]\nport = 1\n";
        assert_eq!(settings(same, "n2"), (Some(1), None));
        let clash = "[hosts.\"n[1-2]\"]\nport = 1\n\n[hosts.\"n[2-3]\"]\nport = 2\n";
        assert_eq!(
            error(clash),
            "inventory h.toml: hosts.\"n[1-2]\" and hosts.\"n[2-3]\" both set port for n2 \
             (1 and 2); give n2 an entry of its own"
        );
        // A range's exclusions are not in it, and do not count towards its size.
        let text = "[hosts.\"n[1-4],!n2\"]\nport = 9\n\n[hosts.\"n[1-2]\"]\nport = 8\n";
        assert_eq!(settings(text, "n1"), (Some(8), None));
        assert_eq!(settings(text, "n2"), (Some(8), None));
        assert_eq!(settings(text, "n3"), (Some(9), None));
        assert!(
            error("[hosts.\"n[1-3],!n2\"]\nport = 9\n\n[hosts.\"n[3-4]\"]\nport = 8\n")
                .contains("both set port for n3")
        );
    }
}
