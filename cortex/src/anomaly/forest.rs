//! Isolation Forest (Liu, Ting & Zhou, 2008), seeded so that training is reproducible.
//!
//! Each tree is grown on `sample_size` windows drawn without replacement, splitting on a random
//! feature (among those not constant in the node) at a uniform threshold between its minimum and
//! maximum, down to depth `⌈log2 sample_size⌉`. A point's path length in a tree is the depth of
//! the leaf it reaches plus `c(leaf size)`, the expected depth still needed to isolate it among
//! the leaf's training points. The anomaly score is `s = 2^(−E(h) / c(sample_size))` with
//! `c(n) = 2·H(n−1) − 2(n−1)/n`: about 0.5 or less for ordinary points, towards 1 for points that
//! are isolated quickly.
//!
//! **Beyond the training range.** In the original algorithm a point far outside a node's range on
//! the split feature follows the boundary points, so 50 failed logins per second would look no
//! stranger than the one failed login seen in training. Each split therefore keeps its node's
//! range `[low, high]` on its feature; a point at `v > high` would be cut off from every training
//! point of the node by a threshold drawn over `[low, v]` with probability `q = (v − high) / (v −
//! low)` (symmetrically below `low`). Scoring uses the expected path length over that event:
//! isolated at this depth with probability `q`, otherwise on down the tree as usual. For points
//! inside the training range (`q = 0`) this is exactly the original algorithm.
//!
//! A feature constant over a tree's whole sample (no failed login all day) can never be split
//! on, so the tree also keeps those features and their value. A point that differs on `k` of
//! them, in a tree whose sample varies on `d` features, is isolated at depth 1 with probability
//! `k / (d + k)`: the chance that a root split drawn over all `d + k` features picks one of them.
//!
//! Attribution ("which features drove it"): every split on the point's path cut its node from
//! `n_parent` to `n_child` training points; that split's feature is credited `ln((n_parent + 1) /
//! (n_child + 1))` (an isolation beyond the range counts as `n_child = 0`), weighted by the
//! probability that the point was not isolated before. A feature that cut the point away from
//! most of the data early dominates the credit.

use std::sync::LazyLock;

use rand::Rng;
use rand::SeedableRng;
use rand::seq::index;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::features::{FEATURE_COUNT, FeatureVector};

const EULER_GAMMA: f64 = 0.577_215_664_901_532_9;

/// Training parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForestParams {
    pub trees: usize,
    /// Windows per tree (ψ); 256 in the original paper.
    pub sample_size: usize,
    pub seed: u64,
}

/// A tree node. Children always have larger indices than their parent (pre-order layout).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Node {
    Split(Split),
    Leaf { size: u32 },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Split {
    feature: usize,
    /// Points with `value < threshold` go left.
    threshold: f64,
    /// Range of `feature` over the node's training points.
    low: f64,
    high: f64,
    left: u32,
    right: u32,
    /// Training points that reached this node.
    size: u32,
}

impl Node {
    fn size(&self) -> u32 {
        match self {
            Node::Split(Split { size, .. }) | Node::Leaf { size } => *size,
        }
    }
}

impl Split {
    /// The child a point goes to, and the probability `q` that a threshold drawn over the node's
    /// range extended to the point would have isolated it here.
    fn step(&self, point: &FeatureVector) -> (usize, f64) {
        let value = point[self.feature];
        let beyond = if value > self.high {
            (value - self.high) / (value - self.low)
        } else if value < self.low {
            (self.low - value) / (self.high - value)
        } else {
            0.0
        };
        let child = if value < self.threshold {
            self.left
        } else {
            self.right
        };
        (child as usize, beyond)
    }

    fn validate(&self, index: usize, nodes: &[Node]) -> Result<(), &'static str> {
        if self.feature >= FEATURE_COUNT {
            return Err("feature index out of range");
        }
        let ordered = self.low < self.threshold && self.threshold <= self.high;
        if !(self.low.is_finite() && self.high.is_finite() && ordered) {
            return Err("threshold must be finite and inside (low, high]");
        }
        for child in [self.left as usize, self.right as usize] {
            if child <= index || child >= nodes.len() {
                return Err("child index does not point forward in the tree");
            }
            if nodes[child].size() > self.size {
                return Err("child holds more points than its parent");
            }
        }
        Ok(())
    }
}

/// A feature that had one value over a tree's whole sample.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConstantFeature {
    pub feature: usize,
    pub value: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    nodes: Vec<Node>,
    /// Features constant over the tree's sample.
    constant: Vec<ConstantFeature>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IsolationForest {
    sample_size: usize,
    trees: Vec<Tree>,
}

/// Why a stored forest cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ForestError {
    #[error("the forest has no trees")]
    NoTrees,
    #[error("sample size {0} is below 2")]
    SampleSize(usize),
    #[error("tree {tree} has an invalid or repeated constant feature")]
    BadConstant { tree: usize },
    #[error("tree {tree} has no nodes")]
    EmptyTree { tree: usize },
    #[error("tree {tree} node {node}: {reason}")]
    BadNode {
        tree: usize,
        node: usize,
        reason: &'static str,
    },
}

/// `ln n` for the small counts attribution takes logarithms of, from a table.
fn ln_count(n: u32) -> f64 {
    static TABLE: LazyLock<Vec<f64>> =
        LazyLock::new(|| (0..=1024u32).map(|n| f64::from(n).ln()).collect());
    TABLE
        .get(n as usize)
        .copied()
        .unwrap_or_else(|| f64::from(n).ln())
}

/// Expected path length of an unsuccessful search in a binary search tree of `n` points.
pub fn average_path_length(n: usize) -> f64 {
    match n {
        0 | 1 => 0.0,
        2 => 1.0,
        _ => {
            let n = n as f64;
            2.0 * ((n - 1.0).ln() + EULER_GAMMA) - 2.0 * (n - 1.0) / n
        }
    }
}

impl IsolationForest {
    /// Grows the forest on `data` (model-input vectors). `data` must hold at least two points;
    /// fewer points than `params.sample_size` shrink the per-tree sample to all of them.
    pub fn train(data: &[FeatureVector], params: ForestParams) -> Result<Self, ForestError> {
        let sample_size = params.sample_size.min(data.len());
        if sample_size < 2 {
            return Err(ForestError::SampleSize(sample_size));
        }
        if params.trees == 0 {
            return Err(ForestError::NoTrees);
        }
        let max_depth = (sample_size as f64).log2().ceil() as usize;
        let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
        let trees = (0..params.trees)
            .map(|_| {
                let mut rows = index::sample(&mut rng, data.len(), sample_size).into_vec();
                let constant = constant_features(data, &rows);
                let mut nodes = Vec::with_capacity(2 * sample_size);
                grow(data, &mut rows, 0, max_depth, &mut rng, &mut nodes);
                Tree { nodes, constant }
            })
            .collect();
        Ok(IsolationForest { sample_size, trees })
    }

    /// Anomaly score `s = 2^(−E(h)/c(ψ))` of a model-input vector.
    pub fn score(&self, point: &FeatureVector) -> f64 {
        self.walk(point, None)
    }

    /// The score and each feature's share of the isolation credit (shares sum to 1, or are all
    /// zero when no split separated the point from any training data).
    pub fn score_with_attribution(&self, point: &FeatureVector) -> (f64, FeatureVector) {
        let mut credit = [0.0; FEATURE_COUNT];
        let score = self.walk(point, Some(&mut credit));
        let total: f64 = credit.iter().sum();
        if total > 0.0 {
            credit.iter_mut().for_each(|c| *c /= total);
        }
        (score, credit)
    }

    /// Walks every tree once, adding up path lengths and, when asked, isolation credit.
    fn walk(&self, point: &FeatureVector, mut credit: Option<&mut FeatureVector>) -> f64 {
        let total: f64 = self
            .trees
            .iter()
            .map(|tree| tree.walk(point, credit.as_deref_mut()))
            .sum();
        let mean = total / self.trees.len() as f64;
        2f64.powf(-mean / average_path_length(self.sample_size))
    }

    /// Checks the structure of a forest read from storage, so that scoring cannot index out of
    /// bounds or loop.
    pub fn validate(&self) -> Result<(), ForestError> {
        if self.trees.is_empty() {
            return Err(ForestError::NoTrees);
        }
        if self.sample_size < 2 {
            return Err(ForestError::SampleSize(self.sample_size));
        }
        for (t, tree) in self.trees.iter().enumerate() {
            tree.validate(t)?;
        }
        Ok(())
    }
}

fn constant_features(data: &[FeatureVector], rows: &[usize]) -> Vec<ConstantFeature> {
    let Some(&first) = rows.first() else {
        return Vec::new();
    };
    (0..FEATURE_COUNT)
        .filter(|&f| rows.iter().all(|&row| data[row][f] == data[first][f]))
        .map(|feature| ConstantFeature {
            feature,
            value: data[first][feature],
        })
        .collect()
}

/// Appends the subtree over `rows` to `nodes` in pre-order; returns its root index.
fn grow(
    data: &[FeatureVector],
    rows: &mut [usize],
    depth: usize,
    max_depth: usize,
    rng: &mut ChaCha8Rng,
    nodes: &mut Vec<Node>,
) -> u32 {
    let here = nodes.len() as u32;
    let size = rows.len() as u32;
    let split = if depth < max_depth && rows.len() > 1 {
        choose_split(data, rows, rng)
    } else {
        None
    };
    let Some(Cut {
        feature,
        threshold,
        low,
        high,
    }) = split
    else {
        nodes.push(Node::Leaf { size });
        return here;
    };
    nodes.push(Node::Leaf { size });
    let boundary = partition(rows, |row| data[row][feature] < threshold);
    let (left_rows, right_rows) = rows.split_at_mut(boundary);
    let left = grow(data, left_rows, depth + 1, max_depth, rng, nodes);
    let right = grow(data, right_rows, depth + 1, max_depth, rng, nodes);
    nodes[here as usize] = Node::Split(Split {
        feature,
        threshold,
        low,
        high,
        left,
        right,
        size,
    });
    here
}

/// A split under construction.
struct Cut {
    feature: usize,
    threshold: f64,
    low: f64,
    high: f64,
}

/// A random feature among those not constant over `rows`, and a threshold strictly inside its
/// range so both sides get at least one point.
fn choose_split(data: &[FeatureVector], rows: &[usize], rng: &mut ChaCha8Rng) -> Option<Cut> {
    let mut ranges = [(f64::INFINITY, f64::NEG_INFINITY); FEATURE_COUNT];
    for &row in rows {
        for (range, &value) in ranges.iter_mut().zip(&data[row]) {
            range.0 = range.0.min(value);
            range.1 = range.1.max(value);
        }
    }
    let candidates: Vec<usize> = (0..FEATURE_COUNT)
        .filter(|&f| ranges[f].0 < ranges[f].1)
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let feature = candidates[rng.random_range(0..candidates.len())];
    let (low, high) = ranges[feature];
    let threshold = low + (high - low) * rng.random::<f64>();
    // A threshold equal to the minimum would leave the left side empty.
    let threshold = if threshold > low {
        threshold
    } else {
        low + (high - low) / 2.0
    };
    Some(Cut {
        feature,
        threshold,
        low,
        high,
    })
}

/// Moves the rows for which `goes_left` holds to the front; returns how many there are.
fn partition(rows: &mut [usize], goes_left: impl Fn(usize) -> bool) -> usize {
    let mut boundary = 0;
    for i in 0..rows.len() {
        if goes_left(rows[i]) {
            rows.swap(i, boundary);
            boundary += 1;
        }
    }
    boundary
}

impl Tree {
    /// Probability that the root split isolates the point on a feature constant in the sample,
    /// and how many such features the point differs on.
    fn constant_isolation(&self, point: &FeatureVector) -> (f64, usize) {
        let differing = self.differing_constants(point).count();
        if differing == 0 {
            return (0.0, 0);
        }
        let varying = FEATURE_COUNT.saturating_sub(self.constant.len());
        (differing as f64 / (varying + differing) as f64, differing)
    }

    fn differing_constants(&self, point: &FeatureVector) -> impl Iterator<Item = usize> {
        self.constant
            .iter()
            .filter(|c| point[c.feature] != c.value)
            .map(|c| c.feature)
    }

    /// Expected path length of the point, counting isolation beyond a node's range (module
    /// documentation); adds the point's isolation credit per feature to `credit`, if given.
    fn walk(&self, point: &FeatureVector, mut credit: Option<&mut FeatureVector>) -> f64 {
        let (at_root, differing) = self.constant_isolation(point);
        if let Some(credit) = credit.as_deref_mut()
            && differing > 0
        {
            let root_size = self.nodes.first().map_or(0, Node::size);
            let share = at_root / differing as f64 * ln_count(root_size.saturating_add(1));
            for feature in self.differing_constants(point) {
                credit[feature] += share;
            }
        }
        let mut expected = at_root;
        let mut not_isolated = 1.0 - at_root;
        let mut depth = 0.0;
        let mut node = 0usize;
        loop {
            match &self.nodes[node] {
                Node::Leaf { size } => {
                    return expected + not_isolated * (depth + average_path_length(*size as usize));
                }
                Node::Split(split) => {
                    let (child, beyond) = split.step(point);
                    if let Some(credit) = credit.as_deref_mut() {
                        let parent = ln_count(split.size.saturating_add(1));
                        let child_size = ln_count(self.nodes[child].size().saturating_add(1));
                        let cut = parent - (1.0 - beyond) * child_size;
                        credit[split.feature] += not_isolated * cut;
                    }
                    depth += 1.0;
                    expected += not_isolated * beyond * depth;
                    not_isolated *= 1.0 - beyond;
                    node = child;
                }
            }
        }
    }

    fn validate(&self, tree: usize) -> Result<(), ForestError> {
        if self.nodes.is_empty() {
            return Err(ForestError::EmptyTree { tree });
        }
        for (i, constant) in self.constant.iter().enumerate() {
            let duplicate = self.constant[..i]
                .iter()
                .any(|c| c.feature == constant.feature);
            if constant.feature >= FEATURE_COUNT || !constant.value.is_finite() || duplicate {
                return Err(ForestError::BadConstant { tree });
            }
        }
        for (i, node) in self.nodes.iter().enumerate() {
            if let Node::Split(split) = node {
                split
                    .validate(i, &self.nodes)
                    .map_err(|reason| ForestError::BadNode {
                        tree,
                        node: i,
                        reason,
                    })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform_cluster(n: usize, seed: u64) -> Vec<FeatureVector> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| std::array::from_fn(|_| rng.random::<f64>()))
            .collect()
    }

    fn params(seed: u64) -> ForestParams {
        ForestParams {
            trees: 100,
            sample_size: 256,
            seed,
        }
    }

    #[test]
    fn c_of_n_matches_the_paper() {
        assert_eq!(average_path_length(1), 0.0);
        assert_eq!(average_path_length(2), 1.0);
        // c(256) = 2(ln 255 + γ) − 2·255/256 ≈ 10.2448
        assert!((average_path_length(256) - 10.2448).abs() < 1e-3);
    }

    #[test]
    fn an_outlier_scores_above_the_cluster() {
        let data = uniform_cluster(1000, 1);
        let forest = IsolationForest::train(&data, params(7)).unwrap_or_else(|e| panic!("{e}"));
        let inlier = forest.score(&[0.5; FEATURE_COUNT]);
        let mut far = [0.5; FEATURE_COUNT];
        far[3] = 25.0;
        let outlier = forest.score(&far);
        assert!(outlier > 0.6, "outlier score {outlier}");
        assert!(inlier < 0.5, "inlier score {inlier}");
        let (_, share) = forest.score_with_attribution(&far);
        let top = (0..FEATURE_COUNT).max_by(|&a, &b| share[a].total_cmp(&share[b]));
        assert_eq!(top, Some(3));
        assert!((share.iter().sum::<f64>() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn same_seed_same_forest_other_seed_other_forest() {
        let data = uniform_cluster(600, 2);
        let train = |seed| IsolationForest::train(&data, params(seed)).ok();
        assert_eq!(train(3), train(3));
        assert_ne!(train(3), train(4));
    }

    #[test]
    fn constant_data_gives_leaves_and_isolates_any_change() {
        let data = vec![[1.0; FEATURE_COUNT]; 50];
        let forest = IsolationForest::train(&data, params(1)).unwrap_or_else(|e| panic!("{e}"));
        assert!(forest.validate().is_ok());
        assert!((forest.score(&[1.0; FEATURE_COUNT]) - 0.5).abs() < 1e-12);
        let (_, unchanged) = forest.score_with_attribution(&[1.0; FEATURE_COUNT]);
        assert_eq!(unchanged, [0.0; FEATURE_COUNT]);
        // A value never seen where training never varied is isolated at the root.
        let mut changed = [1.0; FEATURE_COUNT];
        changed[4] = 2.0;
        assert_eq!(
            forest.score(&changed),
            2f64.powf(-1.0 / average_path_length(50))
        );
        assert_eq!(forest.score_with_attribution(&changed).1[4], 1.0);
    }

    #[test]
    fn too_little_data_or_no_trees_is_an_error() {
        let one = vec![[0.0; FEATURE_COUNT]];
        assert_eq!(
            IsolationForest::train(&one, params(1)),
            Err(ForestError::SampleSize(1))
        );
        let data = uniform_cluster(10, 1);
        let no_trees = ForestParams {
            trees: 0,
            ..params(1)
        };
        assert_eq!(
            IsolationForest::train(&data, no_trees),
            Err(ForestError::NoTrees)
        );
    }

    #[test]
    fn validate_rejects_backward_children_and_bad_features() {
        let looping = IsolationForest {
            sample_size: 4,
            trees: vec![Tree {
                nodes: vec![Node::Split(Split {
                    feature: 0,
                    threshold: 0.5,
                    low: 0.0,
                    high: 1.0,
                    left: 0,
                    right: 0,
                    size: 4,
                })],
                constant: Vec::new(),
            }],
        };
        assert!(matches!(
            looping.validate(),
            Err(ForestError::BadNode { node: 0, .. })
        ));
        let bad_feature = IsolationForest {
            sample_size: 4,
            trees: vec![Tree {
                nodes: vec![
                    Node::Split(Split {
                        feature: FEATURE_COUNT,
                        threshold: 0.5,
                        low: 0.0,
                        high: 1.0,
                        left: 1,
                        right: 2,
                        size: 4,
                    }),
                    Node::Leaf { size: 2 },
                    Node::Leaf { size: 2 },
                ],
                constant: Vec::new(),
            }],
        };
        assert!(bad_feature.validate().is_err());
    }
}
