//! A request timeline as SVG, for `causeway lab failover`: one panel per scenario, one lane
//! per serving cluster plus one for failed requests, each request a tick at its start time
//! coloured by who served it, and the failure and the recovery marked as vertical lines.
//! Pure string building; the caller writes the file.

use std::fmt::Write as _;

/// One panel: a scenario's requests and its marks, times in ms from any common origin.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    pub from_ms: f64,
    pub to_ms: f64,
    /// `(start time, serving cluster or None for a failure)` per request.
    pub requests: Vec<(f64, Option<String>)>,
    /// `(time, label)`: the failure, the restoration.
    pub marks: Vec<(f64, String)>,
}

const WIDTH: f64 = 900.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const LANE: f64 = 18.0;
const TITLE: f64 = 22.0;
const AXIS: f64 = 18.0;
const GAP: f64 = 12.0;

/// The colour of a cluster's requests (stable per id), red for failures.
pub fn colour(served_by: Option<&str>) -> &'static str {
    const PALETTE: [&str; 6] = [
        "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf",
    ];
    match served_by {
        None => "#d62728",
        Some(id) => {
            let n: usize = id
                .trim_start_matches('c')
                .parse()
                .unwrap_or_else(|_| id.bytes().map(usize::from).sum());
            PALETTE[n.saturating_sub(1) % PALETTE.len()]
        }
    }
}

/// Renders the panels one above the other.
pub fn timeline(panels: &[Panel]) -> String {
    let mut body = String::new();
    let mut y = 10.0;
    for panel in panels {
        y = render_panel(&mut body, panel, y) + GAP;
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{y:.0}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n"
    )
}

fn render_panel(out: &mut String, panel: &Panel, top: f64) -> f64 {
    let mut lanes: Vec<Option<String>> = Vec::new();
    for (_, served) in &panel.requests {
        if served.is_some() && !lanes.contains(served) {
            lanes.push(served.clone());
        }
    }
    lanes.sort();
    lanes.push(None); // failures last
    let span = (panel.to_ms - panel.from_ms).max(1.0);
    let x = |t: f64| LEFT + (t - panel.from_ms) / span * (WIDTH - LEFT - RIGHT);
    let lanes_top = top + TITLE;
    let bottom = lanes_top + LANE * lanes.len() as f64;
    let _ = writeln!(
        out,
        "<text x=\"{LEFT}\" y=\"{:.1}\" font-weight=\"bold\">{}</text>",
        top + 14.0,
        escape(&panel.title)
    );
    for (i, lane) in lanes.iter().enumerate() {
        let ly = lanes_top + LANE * i as f64;
        let label = lane.as_deref().unwrap_or("failed");
        let _ = writeln!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"{}\">{}</text>\
             <line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{:.1}\" y2=\"{:.1}\" stroke=\"#eee\"/>",
            LEFT - 6.0,
            ly + 13.0,
            colour(lane.as_deref()),
            escape(label),
            WIDTH - RIGHT,
            ly + LANE,
            ly + LANE
        );
    }
    for (t, served) in &panel.requests {
        if *t < panel.from_ms || *t > panel.to_ms {
            continue;
        }
        let lane = lanes.iter().position(|l| l == served).unwrap_or(0);
        let _ = write!(
            out,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"2\" height=\"{:.0}\" fill=\"{}\"/>",
            x(*t),
            lanes_top + LANE * lane as f64 + 3.0,
            LANE - 6.0,
            colour(served.as_deref())
        );
    }
    out.push('\n');
    for (t, label) in &panel.marks {
        let _ = writeln!(
            out,
            "<line x1=\"{0:.1}\" x2=\"{0:.1}\" y1=\"{1:.1}\" y2=\"{2:.1}\" stroke=\"black\" \
             stroke-dasharray=\"4 3\"/><text x=\"{3:.1}\" y=\"{4:.1}\">{5}</text>",
            x(*t),
            lanes_top,
            bottom,
            x(*t) + 3.0,
            lanes_top + 10.0,
            escape(label)
        );
    }
    // Time axis: a tick every second.
    let seconds = (span / 1000.0).floor() as usize;
    let step = (seconds / 12).max(1);
    for s in (0..=seconds).step_by(step) {
        let tx = x(panel.from_ms + s as f64 * 1000.0);
        let _ = write!(
            out,
            "<text x=\"{tx:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#666\">{s}s</text>",
            bottom + 13.0
        );
    }
    out.push('\n');
    bottom + AXIS
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_draw_one_tick_per_request_in_its_clusters_lane_and_the_marks() {
        let panel = Panel {
            title: "1: c1's endpoint <killed>".into(),
            from_ms: 1000.0,
            to_ms: 3000.0,
            requests: vec![
                (1100.0, Some("c1".into())),
                (1500.0, None),
                (2000.0, Some("c3".into())),
                (9000.0, Some("c3".into())), // outside the window: not drawn
            ],
            marks: vec![(1400.0, "failure".into()), (2500.0, "restored".into())],
        };
        let svg = timeline(&[panel.clone(), panel]);
        assert!(
            svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""),
            "{svg}"
        );
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("width=\"2\"").count(), 6, "3 ticks per panel");
        assert_eq!(
            svg.matches(colour(None)).count(),
            4,
            "failed lane label + tick, twice"
        );
        assert_eq!(svg.matches("stroke-dasharray").count(), 4);
        assert!(svg.contains("&lt;killed&gt;") && !svg.contains("<killed>"));
        // c1's tick sits in the first lane, the failure in the last (third).
        assert!(svg.contains(&format!(
            "<rect x=\"{:.1}\" y=\"35.0\"",
            LEFT + 0.05 * (WIDTH - LEFT - RIGHT)
        )));
    }

    #[test]
    fn colours_are_stable_per_cluster_and_red_for_failures() {
        assert_eq!(colour(Some("c1")), "#1f77b4");
        assert_eq!(colour(Some("c3")), "#ff7f0e");
        assert_eq!(colour(None), "#d62728");
        assert_ne!(colour(Some("c2")), colour(None));
    }
}
