//! Editing `docs/benchmarks.md` in place: each bench rewrites only its own part of the page.
//! Pure functions on the page's text, so `tests/bench_doc.rs` checks them without a bench run.
//!
//! A section is either everything from its `## ` heading up to the next section
//! (`replace_section`), or the text between its own begin and end markers, holding one block
//! per run label (`replace_block`). "The next section" starts at its heading or at a begin
//! marker placed above that heading, whichever comes first: the announcements section used to
//! run up to the storm's heading and so swallowed the storm's `<!-- storm:begin -->` line above
//! it, after which every storm run appended a whole new storm section to the page.

/// Where the section that follows byte `from` starts: the next line that is a `## ` heading or
/// a `<!-- …:begin -->` marker, or the end of the page.
fn next_section(doc: &str, from: usize) -> usize {
    let mut at = from;
    for line in doc[from..].split_inclusive('\n') {
        let t = line.trim_end();
        if at > from
            && (t.starts_with("## ") || (t.starts_with("<!-- ") && t.ends_with(":begin -->")))
        {
            return at;
        }
        at += line.len();
    }
    doc.len()
}

/// `doc` with the text from `begin` through `end` (and the line break after it) replaced by
/// `section`, which carries its own markers; appended if the page has no such pair.
pub fn replace_marked(doc: &str, begin: &str, end: &str, section: &str) -> String {
    match (doc.find(begin), doc.find(end)) {
        (Some(b), Some(e)) if b < e => {
            let rest = &doc[e + end.len()..];
            format!(
                "{}{}{}",
                &doc[..b],
                section,
                rest.strip_prefix('\n').unwrap_or(rest)
            )
        }
        _ => format!("{}\n\n{}", doc.trim_end(), section),
    }
}

/// `doc` with the section headed `heading` replaced by `section`, or with `section` appended
/// if the page has no such heading.
pub fn replace_section(doc: &str, heading: &str, section: &str) -> String {
    match doc.find(heading) {
        Some(start) => {
            let end = next_section(doc, start);
            format!("{}{}{}", &doc[..start], section, &doc[end..])
        }
        None => format!("{}\n\n{}", doc.trim_end_matches('\n'), section),
    }
}

/// Markers of a section made of labelled blocks: `<!-- {name}:begin -->` … `<!-- {name}:end -->`
/// around it, `<!-- {name}-run:{label} -->` … `<!-- /{name}-run:{label} -->` around each block.
pub struct Blocks<'a> {
    pub name: &'a str,
    /// The section's text between its begin marker and its first block (heading and intro).
    pub intro: &'a str,
}

impl Blocks<'_> {
    /// `doc` with the block `label` (its text, markers included) replaced by `block`, or added
    /// after the section's other blocks; the section's intro is rewritten, every other block and
    /// everything outside the section stays as it is. A page without the section gets it
    /// appended. An error if the page holds the begin marker without an end after it, or more
    /// than one begin marker: writing then would lose or duplicate blocks.
    pub fn replace_block(&self, doc: &str, label: &str, block: &str) -> Result<String, String> {
        let begin = format!("<!-- {}:begin -->", self.name);
        let end = format!("<!-- {}:end -->", self.name);
        let (before, section, after) = match doc.find(&begin) {
            Some(b) => {
                if doc[b + begin.len()..].contains(&begin) {
                    return Err(format!("the page holds {begin} more than once"));
                }
                let inner = b + begin.len();
                let e = doc[inner..]
                    .find(&end)
                    .map(|i| inner + i)
                    .ok_or_else(|| format!("the page holds {begin} but no {end} after it"))?;
                (&doc[..b], &doc[inner..e], &doc[e + end.len()..])
            }
            None => {
                if doc.contains(&end) {
                    return Err(format!("the page holds {end} but no {begin}"));
                }
                return Ok(format!(
                    "{}\n\n{begin}\n{}{block}{end}\n",
                    doc.trim_end(),
                    self.intro
                ));
            }
        };
        let open = format!("<!-- {}-run:", self.name);
        let mut blocks: Vec<(String, String)> = vec![];
        let mut rest = section;
        while let Some(b) = rest.find(&open) {
            let name_start = b + open.len();
            let Some(name_len) = rest[name_start..].find(" -->") else {
                break;
            };
            let name = &rest[name_start..name_start + name_len];
            let close = format!("<!-- /{}-run:{name} -->\n", self.name);
            let Some(c) = rest[b..].find(&close) else {
                break;
            };
            blocks.push((name.to_string(), rest[b..b + c + close.len()].to_string()));
            rest = &rest[b + c + close.len()..];
        }
        match blocks.iter_mut().find(|(n, _)| n == label) {
            Some(b) => b.1 = block.to_string(),
            None => blocks.push((label.to_string(), block.to_string())),
        }
        let body: Vec<String> = blocks.into_iter().map(|(_, b)| b).collect();
        Ok(format!(
            "{before}{begin}\n{}{}{end}{after}",
            self.intro,
            body.join("\n")
        ))
    }
}
