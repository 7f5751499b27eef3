// Open-addressing hash tables for word counting and word -> id lookup (see word2vec_corpus.h).
#include "word2vec_corpus.h"

#include <cstring>

#include "common.h"

namespace genai_fast {

namespace {
size_t table_size(size_t n) {
  size_t cap = 16;
  while (cap < 2 * n + 2) cap <<= 1;
  return cap;
}
}  // namespace

void W2VCounter::rehash(size_t capacity) {
  slots_.assign(capacity, -1);
  mask_ = capacity - 1;
  for (size_t i = 0; i < entries_.size(); ++i) {
    size_t s = hash_bytes(entries_[i].first) & mask_;
    while (slots_[s] >= 0) s = (s + 1) & mask_;
    slots_[s] = static_cast<int64_t>(i);
  }
}

void W2VCounter::add(std::string_view word) {
  ++total_words_;
  size_t s = hash_bytes(word) & mask_;
  while (true) {
    const int64_t e = slots_[s];
    if (e < 0) break;
    if (entries_[e].first == word) {
      ++entries_[e].second;
      return;
    }
    s = (s + 1) & mask_;
  }
  slots_[s] = static_cast<int64_t>(entries_.size());
  entries_.emplace_back(std::string(word), 1);
  if (2 * entries_.size() + 2 > slots_.size()) rehash(slots_.size() * 2);
}

void W2VCounter::prune() {
  std::vector<std::pair<std::string, int64_t>> kept;
  kept.reserve(entries_.size());
  for (auto& e : entries_)
    if (e.second >= min_reduce_) kept.push_back(std::move(e));
  entries_ = std::move(kept);
  ++min_reduce_;
  rehash(table_size(entries_.size()));
}

void W2VCounter::add_text(std::string_view text) {
  for_each_token(
      text, [&](std::string_view w) { add(w); },
      [&]() {
        ++num_lines_;
        if (max_vocab_size_ > 0 && static_cast<int64_t>(entries_.size()) > max_vocab_size_) prune();
      });
}

W2VVocab::W2VVocab(const std::vector<std::string>& words) : words_(words) {
  require(words_.size() < static_cast<size_t>(INT32_MAX), "words: expected fewer than 2^31 words");
  const size_t cap = table_size(words_.size());
  slots_.assign(cap, -1);
  hashes_.assign(cap, 0);
  mask_ = cap - 1;
  for (size_t i = 0; i < words_.size(); ++i) {
    const uint64_t h = hash_bytes(words_[i]);
    size_t s = h & mask_;
    bool duplicate = false;
    while (slots_[s] >= 0) {
      if (hashes_[s] == h && words_[slots_[s]] == words_[i]) duplicate = true;
      s = (s + 1) & mask_;
    }
    require(!duplicate, "words: duplicate word '" + words_[i] + "' at index " + std::to_string(i));
    slots_[s] = static_cast<int32_t>(i);
    hashes_[s] = h;
  }
}

int32_t W2VVocab::lookup(std::string_view word) const {
  const uint64_t h = hash_bytes(word);
  size_t s = h & mask_;
  while (true) {
    const int32_t e = slots_[s];
    if (e < 0) return -1;
    if (hashes_[s] == h && words_[e] == word) return e;
    s = (s + 1) & mask_;
  }
}

W2VVocab::Encoded W2VVocab::encode(std::string_view text, int32_t* ids, int64_t ids_capacity, int64_t* offsets,
                                   int64_t offsets_capacity) const {
  // Every token is at least one byte followed by a separator, so (n + 1) / 2 bounds both counts.
  const int64_t bound = static_cast<int64_t>(text.size() + 1) / 2;
  require(ids != nullptr && ids_capacity >= bound,
          "ids: expected capacity >= " + std::to_string(bound) + ", got " + std::to_string(ids_capacity));
  require(offsets != nullptr && offsets_capacity >= bound + 1,
          "offsets: expected capacity >= " + std::to_string(bound + 1) + ", got " + std::to_string(offsets_capacity));
  Encoded out;
  offsets[0] = 0;
  out.num_offsets = 1;
  for_each_token(
      text,
      [&](std::string_view w) {
        ++out.raw_tokens;
        const int32_t id = lookup(w);
        if (id >= 0) ids[out.num_ids++] = id;
      },
      [&]() {
        ++out.lines;
        if (out.num_ids > offsets[out.num_offsets - 1]) offsets[out.num_offsets++] = out.num_ids;
      });
  return out;
}

}  // namespace genai_fast
