// tca._core.Vocab: the tokenizer of a GGUF file (a vocab-only file is enough).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bind.h"
#include "gguf.h"
#include "vocab.h"

namespace py = pybind11;

namespace tca {

void bind_vocab(py::module_ & m) {
    // Shared, so that a model object can hand out the vocabulary it loaded.
    py::class_<vocab, std::shared_ptr<vocab>>(m, "Vocab", "The tokenizer of a GGUF file.")
        .def(py::init([](const std::string & path) {
                 const std::unique_ptr<gguf_file> f = gguf_file::open(path);
                 return std::shared_ptr<vocab>(vocab::from_gguf(*f));
             }),
             py::arg("path"))
        // text: str (encoded as UTF-8) or bytes.
        .def("tokenize", &vocab::tokenize, py::arg("text"), py::arg("add_special"), py::arg("parse_special"),
             py::call_guard<py::gil_scoped_release>())
        .def(
            "token_to_piece",
            [](const vocab & v, int32_t id, bool special) { return py::bytes(v.token_to_piece(id, special)); },
            py::arg("id"), py::arg("special") = false)
        .def(
            "detokenize",
            [](const vocab & v, const std::vector<int32_t> & ids, bool special) {
                std::string text;
                {
                    py::gil_scoped_release release;
                    text = v.detokenize(ids, special);
                }
                return py::bytes(text);
            },
            py::arg("ids"), py::arg("special") = false)
        .def("is_eog", &vocab::is_eog, py::arg("id"))
        .def("is_control", &vocab::is_control, py::arg("id"))
        .def(
            "piece", [](const vocab & v, int32_t id) { return py::bytes(v.piece(id)); }, py::arg("id"),
            "The vocabulary string of a token as stored (bytes).")
        .def_property_readonly("n_tokens", &vocab::n_tokens)
        .def_property_readonly("bos_id", &vocab::bos)
        .def_property_readonly("eos_id", &vocab::eos)
        .def_property_readonly("eot_id", &vocab::eot)
        .def_property_readonly("add_bos", &vocab::add_bos)
        .def_property_readonly("add_eos", &vocab::add_eos)
        .def_property_readonly("model",
                               [](const vocab & v) { return v.type() == vocab_type::spm ? "llama" : "gpt2"; })
        .def_property_readonly("pre", &vocab::pre);
}

}  // namespace tca
