//! How the benches edit `docs/benchmarks.md` (benches/support/doc.rs): each run rewrites only
//! its own section or block, and never the markers of the section after it.

#[path = "../benches/support/doc.rs"]
mod doc;

use doc::{replace_marked, replace_section, Blocks};

const STORM: Blocks = Blocks {
    name: "storm",
    intro: "## Reconnect storm\n\nintro\n\n",
};

fn block(label: &str, figure: &str) -> String {
    format!("<!-- storm-run:{label} -->\n### {label}\n\n| p99 | {figure} |\n<!-- /storm-run:{label} -->\n")
}

/// The page as it was: announcements written by heading, the storm section by markers after it.
fn page() -> String {
    format!(
        "# Benchmarks\n\n## Announcements\n\nold figures\n\n<!-- storm:begin -->\n{}{}{}<!-- storm:end -->\n\n## Side by side\n\npeers\n",
        STORM.intro,
        block("current", "200 ms"),
        "\n"
    )
}

#[test]
fn rewriting_a_section_by_heading_keeps_the_begin_marker_of_the_section_after_it() {
    let out = replace_section(
        &page(),
        "## Announcements",
        "## Announcements\n\nnew figures\n\n",
    );
    assert!(
        out.contains("new figures") && !out.contains("old figures"),
        "{out}"
    );
    assert_eq!(out.matches("<!-- storm:begin -->").count(), 1, "{out}");
    assert!(
        out.contains("new figures\n\n<!-- storm:begin -->\n## Reconnect storm"),
        "{out}"
    );
}

#[test]
fn the_last_section_by_heading_runs_to_the_end_of_the_page() {
    let out = replace_section(&page(), "## Side by side", "## Side by side\n\nnew peers\n");
    assert!(out.ends_with("## Side by side\n\nnew peers\n"), "{out}");
    assert!(!out.contains("\npeers\n"), "{out}");
}

#[test]
fn a_heading_the_page_lacks_is_appended() {
    let out = replace_section("# B\n\n## A\n\na\n", "## C", "## C\n\nc\n");
    assert_eq!(out, "# B\n\n## A\n\na\n\n## C\n\nc\n");
}

#[test]
fn storm_runs_with_other_labels_add_blocks_to_the_one_storm_section() {
    // The full run writes announcements, then three storms, as scripts/bench.sh does.
    let mut doc = replace_section(&page(), "## Announcements", "## Announcements\n\nnew\n\n");
    for (label, figure) in [
        ("current", "203 ms"),
        ("client-spread", "108 ms"),
        ("service-listener", "23 ms"),
    ] {
        doc = STORM
            .replace_block(&doc, label, &block(label, figure))
            .expect("written");
    }
    assert_eq!(doc.matches("<!-- storm:begin -->").count(), 1, "{doc}");
    assert_eq!(doc.matches("## Reconnect storm").count(), 1, "{doc}");
    assert_eq!(
        doc.matches("<!-- storm-run:current -->").count(),
        1,
        "{doc}"
    );
    assert!(doc.contains("203 ms") && !doc.contains("200 ms"), "{doc}");
    let order: Vec<usize> = ["203 ms", "108 ms", "23 ms", "## Side by side"]
        .iter()
        .map(|s| doc.find(s).expect(s))
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{doc}");
}

#[test]
fn a_page_that_lost_its_begin_marker_is_refused_not_appended_to() {
    let broken = page().replace("<!-- storm:begin -->\n", "");
    let err = STORM
        .replace_block(&broken, "current", &block("current", "1 ms"))
        .expect_err("no begin marker");
    assert!(err.contains("storm:end"), "{err}");
    let twice = format!("{}{}", page(), page());
    assert!(STORM.replace_block(&twice, "current", "x").is_err());
}

#[test]
fn a_page_without_the_section_gets_it_appended() {
    let out = STORM
        .replace_block("# B\n", "current", &block("current", "1 ms"))
        .expect("appended");
    assert_eq!(
        out,
        format!(
            "# B\n\n<!-- storm:begin -->\n{}{}<!-- storm:end -->\n",
            STORM.intro,
            block("current", "1 ms")
        )
    );
}

/// A marked section (push, SSE, peers) replaces the text between its own markers and nothing
/// else; a page without them gets it appended.
#[test]
fn a_marked_section_replaces_only_what_its_markers_hold() {
    let (b, e) = ("<!-- x:begin -->", "<!-- x:end -->");
    let page = format!("# Page\n\n{b}\nold\n{e}\n## Next\nkept\n");
    let new = format!("{b}\nnew\n{e}\n");
    assert_eq!(
        replace_marked(&page, b, e, &new),
        format!("# Page\n\n{b}\nnew\n{e}\n## Next\nkept\n")
    );
    assert_eq!(
        replace_marked("# Page\n", b, e, &new),
        format!("# Page\n\n{new}")
    );
}
