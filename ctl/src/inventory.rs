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
//! This module also resolves a whole target list: it expands groups (and
//! finds cycles and unknown names), applies exclusions, fills in port and
//! user, and removes duplicates. A port or user written in the list wins
//! over the inventory's; the default port is the last resort.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rexec_protocol::DEFAULT_PORT;
use serde::Deserialize;

use crate::config::ConfigDir;
use crate::nodeset;
use crate::target::{self, ListError, ListItem, Target, TargetSpec};

/// The inventory file's name in ctl's config directory.
pub const FILE_NAME: &str = "hosts.toml";

/// Why a target list could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The inventory file cannot be read.
    #[error("inventory {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The inventory file is not valid TOML of the expected shape.
    #[error("inventory {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the TOML parser said, with line and column.
        message: String,
    },
    /// A host key under `[hosts]` is not a host or range.
    #[error("inventory {path}: [hosts.{key:?}]: {source}")]
    BadHost {
        /// The file.
        path: PathBuf,
        /// The key.
        key: String,
        /// Why.
        source: ListError,
    },
    /// The target list (or a group's) does not parse.
    #[error("{0}")]
    List(#[from] ListError),
    /// A group's members do not parse.
    #[error("in group @{group}: {source}")]
    InGroup {
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
    #[error("group cycle: {}", .0.iter().map(|g| format!("@{g}")).collect::<Vec<_>>().join(" -> "))]
    Cycle(Vec<String>),
    /// Nothing is left to run on.
    #[error("the targets expand to no host")]
    Empty,
    /// The list expands to too many hosts.
    #[error("the targets expand to more than {} hosts", nodeset::MAX_NAMES)]
    TooMany,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InventoryFile {
    #[serde(default)]
    groups: BTreeMap<String, Members>,
    #[serde(default)]
    hosts: BTreeMap<String, HostSettings>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Members {
    One(String),
    Many(Vec<String>),
}

/// What the inventory says about one host.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
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
            Ok(text) => Inventory::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => {
                Ok(Inventory::default())
            }
            Err(source) => Err(InventoryError::Read { path, source }),
        }
    }

    /// Parses the text of an inventory file found at `path`.
    ///
    /// # Errors
    /// When the text is not valid TOML of the expected shape.
    pub fn parse(text: &str, path: PathBuf) -> Result<Inventory, InventoryError> {
        let file: InventoryFile = toml::from_str(text).map_err(|e| InventoryError::Parse {
            path: path.clone(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let groups = file
            .groups
            .into_iter()
            .map(|(name, members)| match members {
                Members::One(list) => (name, list),
                Members::Many(lists) => (name, lists.join(",")),
            })
            .collect();
        let mut hosts = HashMap::new();
        for (key, settings) in file.hosts {
            let bad = |source| InventoryError::BadHost {
                path: path.clone(),
                key: key.clone(),
                source,
            };
            for (exclude, item) in target::parse_list(&key).map_err(bad)? {
                let ListItem::Hosts(specs) = item else {
                    continue;
                };
                if exclude {
                    continue;
                }
                for spec in specs {
                    hosts.insert(spec.host, settings.clone());
                }
            }
        }
        Ok(Inventory {
            path: Some(path),
            groups,
            hosts,
        })
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
        let mut stack = Vec::new();
        let mut targets = self.expand(list, &mut stack)?;
        for list in exclude {
            // `-x LIST` is `!` before each item of LIST: the same matching.
            let mut exclusions = Vec::new();
            for (_, item) in target::parse_list(list)? {
                self.exclusions(item, &mut exclusions, &mut stack)?;
            }
            targets.retain(|t| !exclusions.iter().any(|x| x.excludes(t)));
        }
        if targets.is_empty() {
            return Err(InventoryError::Empty);
        }
        Ok(targets)
    }

    /// Resolves one spec: the list's port and user first, then the
    /// inventory's, then the defaults.
    pub fn complete(&self, spec: TargetSpec) -> Target {
        let settings = self.host(&spec.host);
        Target {
            user: spec.user.or_else(|| settings.and_then(|s| s.user.clone())),
            port: spec
                .port
                .or_else(|| settings.and_then(|s| s.port))
                .unwrap_or(DEFAULT_PORT),
            host: spec.host,
        }
    }

    fn expand(&self, list: &str, stack: &mut Vec<String>) -> Result<Vec<Target>, InventoryError> {
        let mut included: Vec<Target> = Vec::new();
        let mut exclusions: Vec<TargetSpec> = Vec::new();
        for (exclude, item) in target::parse_list(list)? {
            match (exclude, item) {
                (false, ListItem::Hosts(specs)) => {
                    included.extend(specs.into_iter().map(|s| self.complete(s)));
                }
                (false, ListItem::Group(name)) => included.extend(self.group(&name, stack)?),
                (true, item) => self.exclusions(item, &mut exclusions, stack)?,
            }
            if included.len() > nodeset::MAX_NAMES {
                return Err(InventoryError::TooMany);
            }
        }
        included.retain(|t| !exclusions.iter().any(|x| x.excludes(t)));
        let mut seen = std::collections::HashSet::new();
        included.retain(|t| seen.insert(t.clone()));
        Ok(included)
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
            ListItem::Group(name) => {
                let members = self.group(&name, stack)?;
                exclusions.extend(members.into_iter().map(|t| TargetSpec {
                    user: None,
                    host: t.host,
                    port: Some(t.port),
                }));
            }
        }
        Ok(())
    }

    fn group(&self, name: &str, stack: &mut Vec<String>) -> Result<Vec<Target>, InventoryError> {
        if let Some(start) = stack.iter().position(|g| g == name) {
            let mut cycle = stack[start..].to_vec();
            cycle.push(name.to_owned());
            return Err(InventoryError::Cycle(cycle));
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
            Err(e @ (InventoryError::InGroup { .. } | InventoryError::Cycle(_))) => {
                return Err(e);
            }
            Err(e) => {
                return Err(InventoryError::InGroup {
                    group: name.to_owned(),
                    source: Box::new(e),
                });
            }
        };
        stack.pop();
        Ok(members)
    }
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

    #[test]
    fn cycles_unknown_groups_and_empty_results_are_errors() {
        let inv = inventory();
        let cycle = inv.resolve("@loop-a", &[]).unwrap_err().to_string();
        assert_eq!(cycle, "group cycle: @loop-a -> @loop-b -> @loop-a");
        let unknown = inv.resolve("@lost", &[]).unwrap_err().to_string();
        assert!(unknown.contains("unknown group @nowhere"), "{unknown}");
        assert!(unknown.contains("in group @lost"), "{unknown}");
        let broken = inv.resolve("@broken", &[]).unwrap_err().to_string();
        assert!(
            broken.contains("in group @broken") && broken.contains('^'),
            "{broken}"
        );
        assert!(matches!(
            inv.resolve("pc01", &["pc01".into()]),
            Err(InventoryError::Empty)
        ));
        let none = Inventory::default().resolve("@lab", &[]).unwrap_err();
        assert!(none.to_string().contains("no inventory file"), "{none}");
    }

    #[test]
    fn bad_files_say_where() {
        let bad = Inventory::parse("[groups]\nlab = 3\n", PathBuf::from("h.toml")).unwrap_err();
        assert!(bad.to_string().starts_with("inventory h.toml:"), "{bad}");
        let bad =
            Inventory::parse("[hosts.\"n[1-\"]\nport = 1\n", PathBuf::from("h.toml")).unwrap_err();
        assert!(matches!(bad, InventoryError::BadHost { .. }), "{bad}");
        let bad = Inventory::parse("[hosts.a]\nprot = 1\n", PathBuf::from("h.toml")).unwrap_err();
        assert!(bad.to_string().contains("prot"), "{bad}");
    }
}
