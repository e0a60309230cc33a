//! `-b/--gather`: identical stdout printed once under the hosts that
//! produced it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::prefixed::Prefixed;
use super::{Describe, Output, host_note, lock};
use crate::console::Console;
use crate::console::Stream;
use crate::nodeset;
use crate::outcome::{HostResult, Labels};

/// `-b/--gather`: stdout kept until the end, then hosts with identical
/// output printed once under a header naming them as a node set, like
/// `clush -b` and `dshbak -c`. Stderr stays live and prefixed.
pub struct Gathered {
    console: Arc<Console>,
    labels: Labels,
    stdout: Vec<Mutex<Vec<u8>>>,
    stderr: Prefixed,
}

impl Gathered {
    /// Gathered output for hosts named `labels`.
    pub fn new(console: Arc<Console>, labels: Labels) -> Gathered {
        let mut stderr = Prefixed::new(console.clone(), labels.clone());
        stderr.stderr_only = true;
        Gathered {
            console,
            stdout: labels.iter().map(|_| Mutex::default()).collect(),
            labels,
            stderr,
        }
    }
}

impl<T: Describe> Output<T> for Gathered {
    fn chunk(&self, host: usize, stream: Stream, data: &[u8]) {
        match stream {
            Stream::Stdout => lock(&self.stdout[host]).extend_from_slice(data),
            Stream::Stderr => Output::<T>::chunk(&self.stderr, host, stream, data),
        }
    }

    fn done(&self, result: &HostResult<T>) {
        self.stderr.done(result);
        if let Some(note) = host_note(&self.labels[result.index], result) {
            self.console.note(&note);
        }
    }

    fn end(&self) {
        let mut groups: Vec<(Vec<u8>, Vec<usize>)> = Vec::new();
        let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
        for (host, stdout) in self.stdout.iter().enumerate() {
            let output = std::mem::take(&mut *lock(stdout));
            if output.is_empty() {
                continue;
            }
            match seen.get(&output) {
                Some(&group) => groups[group].1.push(host),
                None => {
                    seen.insert(output.clone(), groups.len());
                    groups.push((output, vec![host]));
                }
            }
        }
        for (output, hosts) in groups {
            let names = nodeset::fold(hosts.iter().map(|&h| self.labels[h].as_str()));
            let rule = "-".repeat(15);
            let mut block = format!("{rule}\n{names} ({})\n{rule}\n", hosts.len()).into_bytes();
            block.extend_from_slice(&output);
            if !output.ends_with(b"\n") {
                block.push(b'\n');
            }
            self.console.write(Stream::Stdout, &block);
        }
    }
}
