// Word2vec training on the CPU: skip-gram and CBOW, with negative sampling (SGNS), hierarchical
// softmax (hs), or both (each centre gets the hs update, then the negative-sampling one, as in gensim).
//
// Two entry points share the same per-centre update code:
//   word2vec_train: trains a whole chunk of sentences (token ids + sentence offsets) on Hogwild
//                   threads with subsampling, shrinking windows, noise sampling and a linear
//                   learning-rate decay from alpha_start to alpha_end across the chunk;
//   word2vec_step:  applies the update of an explicit batch (centres, contexts, negatives) in order on
//                   one thread: the arithmetic the torch reference checks.
// Every size and index is validated (std::invalid_argument naming the argument) before any memory of
// the embedding tables is touched.
#pragma once
#include <cstdint>

#include "common.h"

namespace genai_fast {

// How a skip-gram / CBOW centre is updated.
//   SgPair:   gensim/word2vec.c order: every (context, centre) pair draws its own negatives and is
//             applied before the next pair (hs: each context walks the centre's path in turn).
//   SgShared: pWord2Vec: the window's contexts share one set of negatives; all dot products are taken
//             first, then inputs and outputs are updated (small matrix products). hs the same way:
//             the contexts are scored against the centre's path nodes at once.
//   Cbow:     the (mean or sum of the) contexts predicts the centre; gensim's rule: with a sum the
//             error is divided by the context count, with a mean it is not.
enum class W2VMode : int { SgPair = 0, SgShared = 1, Cbow = 2 };

// Hierarchical softmax: the vocabulary's Huffman tree (genai_fast/word2vec/huffman.py) and the output
// vectors of its inner nodes. Word w's path is points[w * depth + b] / codes[w * depth + b] for
// b < lengths[w]; the label at each node is 1 - code. Absent (syn1 == nullptr) when hs is off.
struct W2VTree {
  float* syn1 = nullptr;             // [vocab, dim] inner-node vectors (rows 0..vocab-2 used)
  const int32_t* points = nullptr;   // [vocab, depth] inner-node ids, 0..vocab-2
  const uint8_t* codes = nullptr;    // [vocab, depth] 0 or 1
  const int32_t* lengths = nullptr;  // [vocab] path lengths, 0..depth
  int64_t syn1_numel = 0, points_numel = 0, codes_numel = 0, lengths_numel = 0, depth = 0;
  bool enabled() const { return syn1 != nullptr; }
};

struct W2VTables {
  float* syn0 = nullptr;     // [vocab, dim] input vectors (model.wv.vectors)
  float* syn1neg = nullptr;  // [vocab, dim] negative-sampling output vectors (may be null with hs and negative 0)
  int64_t syn0_numel = 0, syn1neg_numel = 0;
  int64_t vocab = 0, dim = 0;
  W2VTree hs;
  // gensim's lock factors (wv.vectors_lockf): every update of input row w is scaled by
  // lockf[w % lockf_numel] (0 freezes the row, 1 trains it normally); output rows are never scaled.
  // Null (the default: every factor 1) adds the updates unscaled, with no extra work.
  const float* lockf = nullptr;
  int64_t lockf_numel = 0;
};

struct W2VTrainArgs {
  W2VTables tables;
  const int32_t* tokens = nullptr;  // [num_tokens] vocabulary ids (out-of-vocabulary words already dropped)
  int64_t num_tokens = 0;
  const int64_t* offsets = nullptr;  // [num_offsets] sentence starts, offsets[0] = 0, last = num_tokens
  int64_t num_offsets = 0;
  const float* keep_prob = nullptr;  // [vocab] probability of keeping each word (subsampling), or null
  int64_t keep_numel = 0;
  const float* alias_prob = nullptr;  // [vocab] alias-method noise table (unigram^ns_exponent)
  const int32_t* alias_index = nullptr;
  int64_t alias_numel = 0;
  double alpha_start = 0.025, alpha_end = 0.025;
  W2VMode mode = W2VMode::SgShared;
  int64_t window = 5, negative = 5;  // negative 0: hierarchical softmax alone (needs tables.hs)
  bool cbow_mean = true, shrink_windows = true, compute_loss = false;
  uint64_t seed = 1;
  int num_threads = 1;
};

struct W2VResult {
  int64_t raw_words = 0;        // tokens read (before subsampling)
  int64_t effective_words = 0;  // tokens kept by subsampling (centres trained)
  double loss = 0.0;            // sum of -log sigmoid over every pair and tree node scored (compute_loss)
};

struct W2VStepArgs {
  W2VTables tables;
  const int32_t* centers = nullptr;    // [batch]
  const int32_t* contexts = nullptr;   // [batch, num_contexts], -1 = padding
  const int32_t* negatives = nullptr;  // [batch, negative] (SgPair: [batch, num_contexts, negative])
  // With tables.hs, the hs update comes first; negative 0 then means hs alone.
  int64_t batch = 0, num_contexts = 0, negative = 0;
  int64_t centers_numel = 0, contexts_numel = 0, negatives_numel = 0;
  double* loss = nullptr;  // [batch] per-row loss, or null
  int64_t loss_numel = 0;
  double alpha = 0.025;
  W2VMode mode = W2VMode::SgShared;
  bool cbow_mean = true;
};

void validate(const W2VTrainArgs& args);
void validate(const W2VStepArgs& args);
W2VResult word2vec_train(const W2VTrainArgs& args);
void word2vec_step(const W2VStepArgs& args);

}  // namespace genai_fast
