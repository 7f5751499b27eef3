// pybind11 bindings of the word2vec kernels and corpus helpers (registered from bindings.cpp).
// Arrays cross as (address, element count) pairs, like every genai_fast._C function; every size and
// index is validated with the GIL held, then the GIL is released for the work.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "word2vec.h"
#include "word2vec_corpus.h"

namespace py = pybind11;

namespace genai_fast {
namespace {

template <typename T>
T* ptr(uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

W2VMode mode_from_code(int code) {
  require(code >= 0 && code <= 2, "mode: expected 0 (sg pair), 1 (sg shared) or 2 (cbow), got " + std::to_string(code));
  return static_cast<W2VMode>(code);
}

W2VTables tables(uintptr_t syn0, int64_t syn0_numel, uintptr_t syn1neg, int64_t syn1neg_numel, int64_t vocab,
                 int64_t dim) {
  W2VTables t;
  t.syn0 = ptr<float>(syn0);
  t.syn1neg = ptr<float>(syn1neg);
  t.syn0_numel = syn0_numel;
  t.syn1neg_numel = syn1neg_numel;
  t.vocab = vocab;
  t.dim = dim;
  return t;
}

// gensim's lock factors; lockf = 0 with no elements means none (every factor 1). validate() checks the rest.
void set_lock_factors(W2VTables& t, uintptr_t lockf, int64_t lockf_numel) {
  t.lockf = ptr<const float>(lockf);
  t.lockf_numel = lockf_numel;
}

// The hierarchical-softmax tree; syn1 = 0 means no tree (hs off).
W2VTree tree(uintptr_t syn1, int64_t syn1_numel, uintptr_t points, int64_t points_numel, uintptr_t codes,
             int64_t codes_numel, uintptr_t lengths, int64_t lengths_numel, int64_t depth) {
  W2VTree h;
  if (syn1 == 0) return h;
  h.syn1 = ptr<float>(syn1);
  h.points = ptr<const int32_t>(points);
  h.codes = ptr<const uint8_t>(codes);
  h.lengths = ptr<const int32_t>(lengths);
  h.syn1_numel = syn1_numel;
  h.points_numel = points_numel;
  h.codes_numel = codes_numel;
  h.lengths_numel = lengths_numel;
  h.depth = depth;
  return h;
}

py::tuple train_py(uintptr_t tokens, int64_t num_tokens, uintptr_t offsets, int64_t num_offsets, uintptr_t syn0,
                   int64_t syn0_numel, uintptr_t syn1neg, int64_t syn1neg_numel, int64_t vocab_size, int64_t dim,
                   uintptr_t keep_prob, int64_t keep_numel, uintptr_t alias_prob, uintptr_t alias_index,
                   int64_t alias_numel, double alpha_start, double alpha_end, int mode, int64_t window,
                   int64_t negative, bool cbow_mean, bool shrink_windows, bool compute_loss, uint64_t seed,
                   int num_threads, uintptr_t syn1, int64_t syn1_numel, uintptr_t points, int64_t points_numel,
                   uintptr_t codes, int64_t codes_numel, uintptr_t lengths, int64_t lengths_numel, int64_t depth,
                   uintptr_t lockf, int64_t lockf_numel) {
  W2VTrainArgs a;
  a.tables = tables(syn0, syn0_numel, syn1neg, syn1neg_numel, vocab_size, dim);
  a.tables.hs = tree(syn1, syn1_numel, points, points_numel, codes, codes_numel, lengths, lengths_numel, depth);
  set_lock_factors(a.tables, lockf, lockf_numel);
  a.tokens = ptr<const int32_t>(tokens);
  a.num_tokens = num_tokens;
  a.offsets = ptr<const int64_t>(offsets);
  a.num_offsets = num_offsets;
  a.keep_prob = ptr<const float>(keep_prob);
  a.keep_numel = keep_numel;
  if (keep_numel == 0) a.keep_prob = nullptr;
  a.alias_prob = ptr<const float>(alias_prob);
  a.alias_index = ptr<const int32_t>(alias_index);
  a.alias_numel = alias_numel;
  a.alpha_start = alpha_start;
  a.alpha_end = alpha_end;
  a.mode = mode_from_code(mode);
  a.window = window;
  a.negative = negative;
  a.cbow_mean = cbow_mean;
  a.shrink_windows = shrink_windows;
  a.compute_loss = compute_loss;
  a.seed = seed;
  a.num_threads = num_threads;
  validate(a);  // GIL held: a ValueError before any thread starts
  W2VResult r;
  {
    py::gil_scoped_release release;
    r = word2vec_train(a);
  }
  return py::make_tuple(r.raw_words, r.effective_words, r.loss);
}

void step_py(uintptr_t syn0, int64_t syn0_numel, uintptr_t syn1neg, int64_t syn1neg_numel, int64_t vocab_size,
             int64_t dim, uintptr_t centers, int64_t centers_numel, uintptr_t contexts, int64_t contexts_numel,
             uintptr_t negatives, int64_t negatives_numel, int64_t batch, int64_t num_contexts, int64_t negative,
             uintptr_t loss, int64_t loss_numel, double alpha, int mode, bool cbow_mean, uintptr_t syn1,
             int64_t syn1_numel, uintptr_t points, int64_t points_numel, uintptr_t codes, int64_t codes_numel,
             uintptr_t lengths, int64_t lengths_numel, int64_t depth, uintptr_t lockf, int64_t lockf_numel) {
  W2VStepArgs a;
  a.tables = tables(syn0, syn0_numel, syn1neg, syn1neg_numel, vocab_size, dim);
  a.tables.hs = tree(syn1, syn1_numel, points, points_numel, codes, codes_numel, lengths, lengths_numel, depth);
  set_lock_factors(a.tables, lockf, lockf_numel);
  a.centers = ptr<const int32_t>(centers);
  a.contexts = ptr<const int32_t>(contexts);
  a.negatives = ptr<const int32_t>(negatives);
  a.centers_numel = centers_numel;
  a.contexts_numel = contexts_numel;
  a.negatives_numel = negatives_numel;
  a.batch = batch;
  a.num_contexts = num_contexts;
  a.negative = negative;
  a.loss = ptr<double>(loss);
  a.loss_numel = loss_numel;
  a.alpha = alpha;
  a.mode = mode_from_code(mode);
  a.cbow_mean = cbow_mean;
  validate(a);
  py::gil_scoped_release release;
  word2vec_step(a);
}

std::string_view view(const py::bytes& b) {
  char* data = nullptr;
  Py_ssize_t size = 0;
  if (PyBytes_AsStringAndSize(b.ptr(), &data, &size) != 0) throw py::error_already_set();
  return std::string_view(data, static_cast<size_t>(size));
}

py::str decode(const std::string& s) {
  PyObject* obj = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace");
  if (obj == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(obj);
}

}  // namespace
}  // namespace genai_fast

void register_word2vec(py::module_& m) {
  using namespace genai_fast;
  m.def("word2vec_train", &train_py, py::arg("tokens"), py::arg("num_tokens"), py::arg("offsets"),
        py::arg("num_offsets"), py::arg("syn0"), py::arg("syn0_numel"), py::arg("syn1neg"), py::arg("syn1neg_numel"),
        py::arg("vocab_size"), py::arg("dim"), py::arg("keep_prob"), py::arg("keep_numel"), py::arg("alias_prob"),
        py::arg("alias_index"), py::arg("alias_numel"), py::arg("alpha_start"), py::arg("alpha_end"),
        py::arg("mode"), py::arg("window"), py::arg("negative"), py::arg("cbow_mean"), py::arg("shrink_windows"),
        py::arg("compute_loss"), py::arg("seed"), py::arg("num_threads"), py::arg("syn1") = 0, py::arg("syn1_numel") = 0, py::arg("points") = 0,
        py::arg("points_numel") = 0, py::arg("codes") = 0, py::arg("codes_numel") = 0, py::arg("lengths") = 0,
        py::arg("lengths_numel") = 0, py::arg("depth") = 0, py::arg("lockf") = 0, py::arg("lockf_numel") = 0,
        "Train word2vec (mode 0 sg pair, 1 sg shared negatives, 2 cbow; negative sampling, and hierarchical "
        "softmax when syn1 and the Huffman tree are given) over int32 token ids with int64 sentence offsets on "
        "Hogwild threads; input-vector updates scaled by float32 lock factors lockf[id % lockf_numel] when "
        "given; returns (raw_words, effective_words, loss_sum).");
  m.def("word2vec_step", &step_py, py::arg("syn0"), py::arg("syn0_numel"), py::arg("syn1neg"),
        py::arg("syn1neg_numel"), py::arg("vocab_size"), py::arg("dim"), py::arg("centers"), py::arg("centers_numel"),
        py::arg("contexts"), py::arg("contexts_numel"), py::arg("negatives"), py::arg("negatives_numel"),
        py::arg("batch"), py::arg("num_contexts"), py::arg("negative"), py::arg("loss"), py::arg("loss_numel"),
        py::arg("alpha"), py::arg("mode"), py::arg("cbow_mean"), py::arg("syn1") = 0, py::arg("syn1_numel") = 0, py::arg("points") = 0,
        py::arg("points_numel") = 0, py::arg("codes") = 0, py::arg("codes_numel") = 0, py::arg("lengths") = 0,
        py::arg("lengths_numel") = 0, py::arg("depth") = 0, py::arg("lockf") = 0, py::arg("lockf_numel") = 0,
        "Apply the word2vec updates of an explicit batch, row by row, on one thread (int32 ids, -1 pads contexts; "
        "float32 lock factors as in word2vec_train).");

  py::class_<W2VCounter>(m, "Word2VecCounter", "Word counts of LineSentence text (ASCII whitespace, lines)")
      .def(py::init<int64_t>(), py::arg("max_vocab_size") = 0)
      .def(
          "add_text",
          [](W2VCounter& c, const py::bytes& text) {
            std::string_view v = view(text);
            py::gil_scoped_release release;
            c.add_text(v);
          },
          py::arg("text"))
      .def_property_readonly("total_words", &W2VCounter::total_words)
      .def_property_readonly("num_lines", &W2VCounter::num_lines)
      .def_property_readonly("min_reduce", &W2VCounter::min_reduce)
      .def("counts", [](const W2VCounter& c) {
        py::dict out;
        for (const auto& [word, count] : c.entries()) out[decode(word)] = py::int_(count);
        return out;
      });

  py::class_<W2VVocab>(m, "Word2VecVocab", "Word -> id lookup for encoding LineSentence text")
      .def(py::init([](const std::vector<std::string>& words) { return new W2VVocab(words); }), py::arg("words"))
      .def("__len__", &W2VVocab::size)
      .def("lookup", [](const W2VVocab& v, const std::string& w) { return v.lookup(w); }, py::arg("word"))
      .def(
          "encode",
          [](const W2VVocab& v, const py::bytes& text, uintptr_t ids, int64_t ids_capacity, uintptr_t offsets,
             int64_t offsets_capacity) {
            std::string_view t = view(text);
            W2VVocab::Encoded e;
            {
              py::gil_scoped_release release;
              e = v.encode(t, ptr<int32_t>(ids), ids_capacity, ptr<int64_t>(offsets), offsets_capacity);
            }
            return py::make_tuple(e.num_ids, e.num_offsets, e.raw_tokens, e.lines);
          },
          py::arg("text"), py::arg("ids"), py::arg("ids_capacity"), py::arg("offsets"), py::arg("offsets_capacity"),
          "Encode text into int32 ids and int64 sentence offsets; returns (num_ids, num_offsets, raw_tokens, "
          "lines).");
}
