// tca._core.Model and tca._core.Context: a loaded model and an inference context over it.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>

#include "bind.h"
#include "common.h"
#include "context.h"
#include "model.h"

namespace py = pybind11;

namespace tca {

namespace {

// Metadata arrays longer than this are shown as "[N x type]" only (vocabularies hold 10^5 strings).
constexpr uint64_t k_metadata_array_max = 64;

std::string text_of(const py::object & text) {
    if (py::isinstance<py::bytes>(text)) {
        return text.cast<std::string>();
    }
    return py::str(text).cast<std::string>();
}

attention_mode attention_from(const std::string & s) {
    if (s == "dense") {
        return attention_mode::dense;
    }
    if (s == "tca") {
        return attention_mode::tca;
    }
    fail("attention must be 'dense' or 'tca' (got '%s')", s.c_str());
}

py::dict metadata_of(const gguf_file & f) {
    py::dict d;
    for (const std::string & key : f.keys()) {
        if (f.type_of(key) == gguf_type::ARRAY && f.arr_len(key) > k_metadata_array_max) {
            d[py::str(key)] = strfmt("[%llu values]", (unsigned long long)f.arr_len(key));
        } else {
            d[py::str(key)] = f.value_to_string(key);
        }
    }
    return d;
}

}  // namespace

void bind_model(py::module_ & m) {
    py::class_<model, std::shared_ptr<model>>(m, "Model")
        .def(py::init([](const std::string & path, bool vocab_only) {
                 py::gil_scoped_release release;
                 return std::shared_ptr<model>(model_load(path, vocab_only));
             }),
             py::arg("path"), py::arg("vocab_only") = false)
        .def_property_readonly("metadata", [](const model & mo) { return metadata_of(*mo.file); })
        .def_property_readonly("path", [](const model & mo) { return mo.file->path(); })
        .def_property_readonly("vocab_only", [](const model & mo) { return mo.layers.empty(); })
        .def_property_readonly(
            "arch", [](const model & mo) { return mo.file->get_str_or("general.architecture", ""); })
        .def_property_readonly("desc",
                               [](const model & mo) {
                                   return mo.file->get_str_or(
                                       "general.name", mo.file->get_str_or("general.architecture", "?"));
                               })
        .def_property_readonly("n_params", [](const model & mo) { return mo.n_params; })
        .def_property_readonly("size_bytes", [](const model & mo) { return mo.n_bytes; })
        .def_property_readonly(
            "n_vocab",
            [](const model & mo) { return mo.layers.empty() ? mo.vocab->n_tokens() : mo.hp.n_vocab; })
        .def_property_readonly("n_ctx_train", [](const model & mo) { return mo.hp.n_ctx_train; })
        .def_property_readonly("n_layer", [](const model & mo) { return mo.hp.n_layer; })
        .def_property_readonly("n_head", [](const model & mo) { return mo.hp.n_head; })
        .def_property_readonly("n_head_kv", [](const model & mo) { return mo.hp.n_head_kv; })
        .def_property_readonly("n_embd", [](const model & mo) { return mo.hp.n_embd; })
        .def_property_readonly("head_dim", [](const model & mo) { return mo.hp.head_dim; })
        .def_property_readonly("bos_id", [](const model & mo) { return mo.vocab->bos(); })
        .def_property_readonly("eos_id", [](const model & mo) { return mo.vocab->eos(); })
        .def_property_readonly("add_bos", [](const model & mo) { return mo.vocab->add_bos(); })
        .def_property_readonly("chat_template",
                               [](const model & mo) -> py::object {
                                   if (!mo.file->has("tokenizer.chat_template")) {
                                       return py::none();
                                   }
                                   return py::str(mo.file->get_str("tokenizer.chat_template"));
                               })
        .def(
            "tokenize",
            [](const model & mo, const py::object & text, bool add_special, bool parse_special) {
                const std::string s = text_of(text);
                py::gil_scoped_release release;
                return mo.vocab->tokenize(s, add_special, parse_special);
            },
            py::arg("text"), py::arg("add_special") = true, py::arg("parse_special") = false)
        .def(
            "token_to_piece",
            [](const model & mo, int32_t id, bool special) {
                return py::bytes(mo.vocab->token_to_piece(id, special));
            },
            py::arg("token"), py::arg("special") = false)
        .def(
            "detokenize",
            [](const model & mo, const std::vector<int32_t> & ids, bool special) {
                return py::bytes(mo.vocab->detokenize(ids, special));
            },
            py::arg("tokens"), py::arg("special") = false)
        .def("is_eog", [](const model & mo, int32_t id) { return mo.vocab->is_eog(id); });

    // The context keeps its model alive (keep_alive), since it reads the weights through views.
    py::class_<context>(m, "Context")
        .def(py::init([](std::shared_ptr<model> mo, int n_ctx, int n_threads, int n_batch,
                         const std::string & attention, int tca_block, int tca_window, float tca_alpha,
                         float tca_density, const std::string & device) {
                 context_params p;
                 p.n_ctx       = n_ctx;
                 p.n_threads   = n_threads;
                 p.device      = device;
                 p.n_batch     = n_batch;
                 p.attention   = attention_from(attention);
                 p.tca.block   = tca_block;
                 p.tca.window  = tca_window;
                 p.tca.alpha   = tca_alpha;
                 p.tca.density = tca_density;
                 py::gil_scoped_release release;  // a GPU context uploads the weights
                 return std::make_unique<context>(*mo, p);
             }),
             py::arg("model"), py::arg("n_ctx") = 4096, py::arg("n_threads") = 0, py::arg("n_batch") = 512,
             py::arg("attention") = "dense", py::arg("tca_block") = 0, py::arg("tca_window") = 0,
             py::arg("tca_alpha") = -1.0f, py::arg("tca_density") = -1.0f, py::arg("device") = "cpu",
             py::keep_alive<1, 2>())
        .def_property_readonly("device", &context::device)
        .def_property_readonly("attention",
                               [](const context & c) { return c.tca_enabled() ? "tca" : "dense"; })
        .def_property_readonly(
            "tca_settings",
            [](const context & c) -> py::object {
                if (!c.tca_enabled()) {
                    return py::none();
                }
                py::dict d;
                d["block"]                    = c.tca().block;
                d["window"]                   = c.tca().window;
                d["alpha"]                    = c.tca().alpha;
                const std::vector<float> & hc = c.tca().head_config;
                py::array_t<float> p({int64_t(c.get_model().hp.n_layer), int64_t(c.get_model().hp.n_head_kv),
                                      int64_t(c.tca().n_levels)});
                std::copy(hc.begin(), hc.end(), p.mutable_data());
                d["head_config"] = p;
                return d;
            })
        .def_property_readonly("n_ctx", &context::n_ctx)
        .def_property_readonly("n_past", &context::n_past)
        .def_property_readonly("n_threads", &context::n_threads)
        .def(
            "eval",
            [](context & c, const std::vector<int32_t> & tokens, bool logits_all) {
                const int64_t n_rows  = logits_all ? int64_t(tokens.size()) : 1;
                const int64_t n_vocab = c.get_model().hp.n_vocab;
                py::array_t<float> out =
                    logits_all ? py::array_t<float>({n_rows, n_vocab}) : py::array_t<float>({n_vocab});
                float * dst = out.mutable_data();
                py::gil_scoped_release release;
                c.eval(tokens.data(), int64_t(tokens.size()), logits_all, dst);
                return out;
            },
            py::arg("tokens"), py::arg("logits_all") = false)
        .def("reset", &context::reset)
        .def("kv_head_tokens",
             [](const context & c) {
                 // [n_layer, n_head_kv, 2]: tokens held and, of those, compacted (global) tokens per head
                 const hparams & hp = c.get_model().hp;
                 py::array_t<int64_t> out({int64_t(hp.n_layer), int64_t(hp.n_head_kv), int64_t(2)});
                 int64_t * o = out.mutable_data();
                 for (int il = 0; il < hp.n_layer; ++il) {
                     for (int ih = 0; ih < hp.n_head_kv; ++ih) {
                         const kv_head_view h = c.kv_view(il, ih);
                         *o++                 = h.n;
                         *o++                 = h.n_global;
                     }
                 }
                 return out;
             })
        .def(
            "kv_head_positions",
            [](const context & c, int il, int ih) {
                const hparams & hp = c.get_model().hp;
                if (il < 0 || il >= hp.n_layer || ih < 0 || ih >= hp.n_head_kv) {
                    fail("no KV head (%d, %d)", il, ih);
                }
                const kv_head_view h = c.kv_view(il, ih);
                return py::array_t<int32_t>(h.n, h.pos);
            },
            py::arg("layer"), py::arg("kv_head"))
        .def("kv_stats", [](const context & c) {
            const hparams & hp = c.get_model().hp;
            py::dict d;
            py::list per_layer;
            for (int il = 0; il < hp.n_layer; ++il) {
                per_layer.append(c.kv_n_tokens(il));
            }
            const int64_t dense_tokens = c.n_past() * hp.n_layer * hp.n_head_kv;
            d["tokens"]                = c.kv_n_tokens();
            d["bytes"]                 = c.kv_bytes();
            d["dense_tokens"]          = dense_tokens;
            d["dense_bytes"]           = size_t(dense_tokens) * c.kv_bytes_per_token();
            d["tokens_per_layer"]      = per_layer;
            return d;
        });
}

}  // namespace tca
