//! Verification metrics: the LFW protocol (threshold chosen on the other folds), TAR at a fixed FAR,
//! DET points, percentiles.

/// The threshold that maximises accuracy on (`scores`, `labels`), deciding "same" when score > t.
/// Candidates are the midpoints between consecutive distinct scores (and just outside both ends).
pub fn best_threshold(scores: &[f32], labels: &[bool]) -> f32 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    if idx.is_empty() {
        return 0.0;
    }
    // Threshold below everything: all "same".
    let positives = labels.iter().filter(|l| **l).count();
    let mut correct = positives as i64; // every positive right, every negative wrong
    let mut best = (correct, scores[idx[0]] - 1e-6);
    for k in 0..idx.len() {
        // Move scores[idx[k]] below the threshold.
        if labels[idx[k]] {
            correct -= 1
        } else {
            correct += 1
        }
        let next_differs = k + 1 == idx.len() || scores[idx[k + 1]] > scores[idx[k]];
        if next_differs {
            let t = if k + 1 == idx.len() {
                scores[idx[k]] + 1e-6
            } else {
                (scores[idx[k]] + scores[idx[k + 1]]) / 2.0
            };
            if correct > best.0 {
                best = (correct, t);
            }
        }
    }
    best.1
}

pub fn accuracy_at(scores: &[f32], labels: &[bool], t: f32) -> f64 {
    if scores.is_empty() {
        return 0.0;
    }
    let ok = scores.iter().zip(labels).filter(|(s, l)| (**s > t) == **l).count();
    ok as f64 / scores.len() as f64
}

/// K-fold cross-validated accuracy: each fold's threshold is chosen on the other folds (or on the
/// fold itself when only one is present).
#[derive(Debug, Clone)]
pub struct KFold {
    pub mean: f64,
    pub std: f64,
    pub fold_accuracies: Vec<f64>,
    pub fold_thresholds: Vec<f32>,
    /// For every pair, whether it was decided right at its fold's threshold.
    pub correct: Vec<bool>,
}

pub fn kfold(scores: &[f32], labels: &[bool], folds: &[usize]) -> KFold {
    let mut ids: Vec<usize> = folds.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut fold_accuracies = Vec::new();
    let mut fold_thresholds = Vec::new();
    let mut correct = vec![false; scores.len()];
    for &f in &ids {
        let train: Vec<usize> = (0..scores.len()).filter(|&i| folds[i] != f || ids.len() == 1).collect();
        let test: Vec<usize> = (0..scores.len()).filter(|&i| folds[i] == f).collect();
        let t = best_threshold(&pick(scores, &train), &pick(labels, &train));
        let mut ok = 0;
        for &i in &test {
            correct[i] = (scores[i] > t) == labels[i];
            ok += correct[i] as usize;
        }
        fold_accuracies.push(ok as f64 / test.len().max(1) as f64);
        fold_thresholds.push(t);
    }
    let n = fold_accuracies.len().max(1) as f64;
    let mean = fold_accuracies.iter().sum::<f64>() / n;
    let std = (fold_accuracies.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / n).sqrt();
    KFold {
        mean,
        std,
        fold_accuracies,
        fold_thresholds,
        correct,
    }
}

fn pick<T: Copy>(v: &[T], idx: &[usize]) -> Vec<T> {
    idx.iter().map(|&i| v[i]).collect()
}

/// True accept rate at a false accept rate: the threshold lets at most floor(far * impostors)
/// impostor scores above it (score > t accepts). Returns (tar, threshold).
pub fn tar_at_far(scores: &[f32], labels: &[bool], far: f64) -> (f64, f32) {
    let mut neg: Vec<f32> = scores
        .iter()
        .zip(labels)
        .filter(|(_, l)| !**l)
        .map(|(s, _)| *s)
        .collect();
    let pos: Vec<f32> = scores
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l)
        .map(|(s, _)| *s)
        .collect();
    if neg.is_empty() || pos.is_empty() {
        return (0.0, 0.0);
    }
    neg.sort_by(|a, b| b.total_cmp(a));
    let k = (far * neg.len() as f64).floor() as usize;
    let t = if k < neg.len() {
        neg[k]
    } else {
        neg[neg.len() - 1] - 1e-6
    };
    let tar = pos.iter().filter(|s| **s > t).count() as f64 / pos.len() as f64;
    (tar, t)
}

/// DET points (false match rate, false non-match rate) over every distinct threshold.
pub fn det_points(scores: &[f32], labels: &[bool]) -> Vec<(f64, f64)> {
    let npos = labels.iter().filter(|l| **l).count().max(1) as f64;
    let nneg = labels.iter().filter(|l| !**l).count().max(1) as f64;
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[b].total_cmp(&scores[a])); // descending
    let (mut tp, mut fp) = (0f64, 0f64);
    let mut pts = vec![(0.0, 1.0)];
    for (k, &i) in idx.iter().enumerate() {
        if labels[i] {
            tp += 1.0
        } else {
            fp += 1.0
        }
        if k + 1 == idx.len() || scores[idx[k + 1]] < scores[i] {
            pts.push((fp / nneg, 1.0 - tp / npos));
        }
    }
    pts
}

/// Nearest-rank percentile (p in 0..=100) of unsorted values.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separable_scores_give_full_accuracy_and_a_threshold_between() {
        let s = [0.9, 0.8, 0.7, 0.2, 0.1, 0.0];
        let l = [true, true, true, false, false, false];
        let t = best_threshold(&s, &l);
        assert!(t > 0.2 && t < 0.7, "{t}");
        assert_eq!(accuracy_at(&s, &l, t), 1.0);
        let k = kfold(&s, &l, &[0, 1, 2, 0, 1, 2]);
        assert_eq!(k.mean, 1.0);
        assert_eq!(tar_at_far(&s, &l, 0.0).0, 1.0);
    }

    #[test]
    fn overlapping_scores_cost_accuracy() {
        let s = [0.9, 0.3, 0.6, 0.1];
        let l = [true, true, false, false];
        let t = best_threshold(&s, &l);
        assert_eq!(accuracy_at(&s, &l, t), 0.75);
        // At FAR 0 the threshold sits on the top impostor (0.6): only 0.9 passes.
        let (tar, thr) = tar_at_far(&s, &l, 0.0);
        assert_eq!((tar, thr), (0.5, 0.6));
    }

    #[test]
    fn det_starts_at_no_false_matches_and_ends_at_no_misses() {
        let p = det_points(&[0.9, 0.5, 0.4, 0.1], &[true, false, true, false]);
        assert_eq!(p.first(), Some(&(0.0, 1.0)));
        assert_eq!(p.last(), Some(&(1.0, 0.0)));
    }

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(|x| x as f64).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
    }
}
