//! The confidence-over-time chart of an incident, drawn as SVG on the server.
//!
//! The posterior after each piece of evidence is rebuilt from the incident itself: the prior's
//! log-odds plus the contributions of the evidence seen up to that time (the fusion's own
//! arithmetic, so the last point is the incident's confidence).

use std::fmt::Write;

use crate::score::Incident;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 200.0;
const PAD: f64 = 32.0;

/// `(time_ns, posterior probability)` points: the prior at the opening, then one per evidence.
pub fn confidence_points(incident: &Incident) -> Vec<(u64, f64)> {
    let prior = incident.prior.clamp(1e-9, 1.0 - 1e-9);
    let mut log_odds = (prior / (1.0 - prior)).ln();
    let mut evidence: Vec<_> = incident.evidence.iter().collect();
    evidence.sort_by_key(|e| e.time_ns);
    let start = evidence
        .first()
        .map_or(incident.opened_ns, |e| e.first_seen_ns.min(e.time_ns));
    let mut points = vec![(start, prior)];
    for item in evidence {
        log_odds += item.contribution;
        points.push((item.time_ns, 1.0 / (1.0 + (-log_odds).exp())));
    }
    points
}

/// The chart as an `<svg>` element: posterior (0..1) against time, with the prior as the
/// first point.
pub fn confidence_svg(incident: &Incident) -> String {
    let points = confidence_points(incident);
    let first = points.first().map_or(0, |p| p.0);
    let last = points.last().map_or(0, |p| p.0);
    let span = (last.saturating_sub(first)).max(1) as f64;
    let x = |t: u64| PAD + (t.saturating_sub(first)) as f64 / span * (WIDTH - 2.0 * PAD);
    let y = |p: f64| HEIGHT - PAD - p * (HEIGHT - 2.0 * PAD);
    let mut path = String::new();
    for (i, (t, p)) in points.iter().enumerate() {
        let _ = write!(
            path,
            "{}{:.1},{:.1} ",
            if i == 0 { "M" } else { "L" },
            x(*t),
            y(*p)
        );
    }
    let mut svg = format!(
        "<svg class=\"chart\" role=\"img\" aria-label=\"confidence over time\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <line x1=\"{PAD}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" class=\"axis\"/>\
         <line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{b}\" class=\"axis\"/>\
         <text x=\"4\" y=\"{top}\">1.0</text><text x=\"4\" y=\"{b}\">0.0</text>\
         <text x=\"{PAD}\" y=\"{below}\">{seconds_first}</text>\
         <text x=\"{r}\" y=\"{below}\" text-anchor=\"end\">+{seconds:.0} s</text>\
         <path d=\"{path}\" class=\"line\"/>",
        b = HEIGHT - PAD,
        r = WIDTH - PAD,
        top = PAD + 4.0,
        below = HEIGHT - 8.0,
        seconds_first = "0 s",
        seconds = span / 1e9,
        path = path.trim_end(),
    );
    for (t, p) in &points {
        let _ = write!(
            svg,
            "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" class=\"dot\"><title>{:.4}</title></circle>",
            x(*t),
            y(*p),
            p
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::{EntityKey, Evidence, IncidentStatus, Severity, SourceKind};

    fn evidence(contribution: f64, time_ns: u64) -> Evidence {
        Evidence {
            rule_id: "r".into(),
            title: "r".into(),
            source: SourceKind::Auth,
            level: None,
            tags: Vec::new(),
            lr: contribution.exp(),
            contribution,
            hits: 1,
            event_refs: Vec::new(),
            first_seen_ns: time_ns,
            time_ns,
        }
    }

    #[test]
    fn the_last_point_is_the_posterior_and_the_svg_has_one_dot_per_point() {
        let prior: f64 = 0.01;
        let contributions = [3.0, 2.0];
        let incident = Incident {
            id: "inc".into(),
            host: "h".into(),
            entity: EntityKey::Host { host: "h".into() },
            title: "t".into(),
            severity: Severity::High,
            confidence: 0.0,
            prior,
            log_odds: 0.0,
            attack_techniques: Vec::new(),
            status: IncidentStatus::Open,
            opened_ns: 1,
            updated_ns: 3,
            evidence: vec![
                evidence(contributions[1], 20),
                evidence(contributions[0], 10),
            ],
        };
        let points = confidence_points(&incident);
        assert_eq!(points.len(), 3);
        assert_eq!(points[0], (10, prior));
        let log_odds = (prior / (1.0 - prior)).ln() + 5.0;
        let posterior = 1.0 / (1.0 + (-log_odds).exp());
        assert!((points[2].1 - posterior).abs() < 1e-12);
        assert!(points[1].1 < points[2].1);
        let svg = confidence_svg(&incident);
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }
}
