// Corpus text -> word counts and token ids, for word2vec's corpus_file path (LineSentence format: one
// sentence per line, tokens separated by ASCII whitespace). Lines are never cut: a sentence is a whole
// line however long. Tokens are raw UTF-8 byte strings; the Python side decodes them.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace genai_fast {

// Calls fn(token) for every token of `text` and line_end() after every line holding a token.
template <typename TokenFn, typename LineFn>
void for_each_token(std::string_view text, TokenFn token_fn, LineFn line_end) {
  const char* p = text.data();
  const char* const end = p + text.size();
  bool line_has_token = false;
  while (p < end) {
    const char c = *p;
    if (c == '\n') {
      if (line_has_token) line_end();
      line_has_token = false;
      ++p;
    } else if (c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f') {
      ++p;
    } else {
      const char* start = p;
      while (p < end && !(*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r' || *p == '\v' || *p == '\f')) ++p;
      token_fn(std::string_view(start, static_cast<size_t>(p - start)));
      line_has_token = true;
    }
  }
  if (line_has_token) line_end();
}

inline uint64_t hash_bytes(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  return h ^ (h >> 29);
}

// Word counts with gensim's max_vocab_size pruning (when the table exceeds the cap after a line, words
// seen fewer than min_reduce times are dropped and min_reduce grows by one).
class W2VCounter {
 public:
  explicit W2VCounter(int64_t max_vocab_size = 0) : max_vocab_size_(max_vocab_size) { rehash(1024); }
  void add_text(std::string_view text);
  int64_t total_words() const { return total_words_; }
  int64_t num_lines() const { return num_lines_; }
  int64_t min_reduce() const { return min_reduce_; }
  const std::vector<std::pair<std::string, int64_t>>& entries() const { return entries_; }

 private:
  void add(std::string_view word);
  void rehash(size_t capacity);
  void prune();
  int64_t max_vocab_size_;
  int64_t total_words_ = 0, num_lines_ = 0, min_reduce_ = 1;
  std::vector<std::pair<std::string, int64_t>> entries_;
  std::vector<int64_t> slots_;  // index into entries_, -1 empty
  size_t mask_ = 0;
};

// Vocabulary word -> id lookup (read-only after construction; safe to share between threads).
class W2VVocab {
 public:
  explicit W2VVocab(const std::vector<std::string>& words);
  int64_t size() const { return static_cast<int64_t>(words_.size()); }
  int32_t lookup(std::string_view word) const;
  struct Encoded {
    int64_t num_ids = 0;      // ids written
    int64_t num_offsets = 0;  // offsets written (sentence starts + the final end)
    int64_t raw_tokens = 0;   // tokens read, in the vocabulary or not
    int64_t lines = 0;        // non-empty lines read
  };
  // Writes the in-vocabulary ids of `text` and the start of each non-empty sentence (plus the final
  // end) to the buffers; throws std::invalid_argument when a buffer is too small.
  Encoded encode(std::string_view text, int32_t* ids, int64_t ids_capacity, int64_t* offsets,
                 int64_t offsets_capacity) const;

 private:
  std::vector<std::string> words_;
  std::vector<int32_t> slots_;
  std::vector<uint64_t> hashes_;
  size_t mask_ = 0;
};

}  // namespace genai_fast
