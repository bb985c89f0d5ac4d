// tca._core.GGUFFile: the GGUF reader as seen from Python, for tests and tools.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>

#include "bind.h"
#include "common.h"
#include "gguf.h"

namespace py = pybind11;

namespace tca {

namespace {

// GGUF strings are bytes; invalid UTF-8 survives the round trip as surrogate escapes instead of
// raising UnicodeDecodeError on a hostile file.
py::str to_py_str(const char * p, size_t n) {
    PyObject * o = PyUnicode_DecodeUTF8(p, Py_ssize_t(n), "surrogateescape");
    if (o == nullptr) {
        throw py::error_already_set();
    }
    return py::reinterpret_steal<py::str>(o);
}

py::str to_py_str(const std::string & s) {
    return to_py_str(s.data(), s.size());
}

// The inverse, for keys and names passed back in: surrogate escapes become the original bytes.
std::string from_py_str(const py::str & s) {
    PyObject * b = PyUnicode_AsEncodedString(s.ptr(), "utf-8", "surrogateescape");
    if (b == nullptr) {
        throw py::error_already_set();
    }
    return std::string(py::reinterpret_steal<py::bytes>(b));
}

// Wraps a getter gguf_file::*(const std::string & key) so that it takes the key as a Python str.
template <typename R>
auto by_key(R (gguf_file::*getter)(const std::string &) const) {
    return [getter](const gguf_file & f, const py::str & key) { return (f.*getter)(from_py_str(key)); };
}

// One fixed-size array element at p (possibly unaligned).
py::object elem_to_py(gguf_type type, const uint8_t * p) {
    const gguf_number n = gguf_read_number(type, p);
    switch (n.k) {
        case gguf_number::kind::sint:
            return py::int_(n.i);
        case gguf_number::kind::uint:
            return py::int_(n.u);
        case gguf_number::kind::real:
            return py::float_(n.f);
        case gguf_number::kind::boolean:
            return py::bool_(n.b);
    }
    return py::none();
}

// A metadata value as int / float / bool / str, or a list of those for an array.
py::object kv_to_py(const gguf_file & f, const gguf_kv & v) {
    switch (v.type) {
        case gguf_type::UINT8:
        case gguf_type::UINT16:
        case gguf_type::UINT32:
        case gguf_type::UINT64:
            return py::int_(v.u64);
        case gguf_type::INT8:
        case gguf_type::INT16:
        case gguf_type::INT32:
        case gguf_type::INT64:
            return py::int_(v.i64);
        case gguf_type::FLOAT32:
        case gguf_type::FLOAT64:
            return py::float_(v.f64);
        case gguf_type::BOOL:
            return py::bool_(v.u64 != 0);
        case gguf_type::STRING:
            return to_py_str(v.str);
        case gguf_type::ARRAY:
            break;
    }
    py::list out;
    if (v.arr_type == gguf_type::STRING) {
        for (const std::string & s : f.get_arr_str(v.key)) {
            out.append(to_py_str(s));
        }
        return out;
    }
    const size_t elem_size = gguf_type_size(v.arr_type);
    for (uint64_t i = 0; i < v.arr_len; ++i) {
        out.append(elem_to_py(v.arr_type, v.arr_data + i * elem_size));
    }
    return out;
}

py::dict tensor_to_py(const gguf_tensor & t) {
    py::dict d;
    d["name"]    = to_py_str(t.name);
    d["type"]    = ggml_traits(t.type).name;
    d["type_id"] = uint32_t(t.type);
    py::list shape;
    for (int i = 0; i < t.n_dims; ++i) {
        shape.append(t.ne[i]);
    }
    d["shape"]   = shape;
    d["offset"]  = t.offset;
    d["n_bytes"] = t.n_bytes;
    return d;
}

py::list str_list(const std::vector<std::string> & items) {
    py::list out;
    for (const std::string & s : items) {
        out.append(to_py_str(s));
    }
    return out;
}

}  // namespace

void bind_gguf(py::module_ & m) {
    py::class_<gguf_file>(m, "GGUFFile", "A memory-mapped, validated GGUF file (read-only).")
        .def(py::init(&gguf_file::open), py::arg("path"))
        .def_property_readonly("path", &gguf_file::path)
        .def_property_readonly("version", &gguf_file::version)
        .def_property_readonly("file_size", &gguf_file::file_size)
        .def_property_readonly("alignment", &gguf_file::alignment)
        .def_property_readonly("data_offset", &gguf_file::data_offset)
        .def_property_readonly("metadata",
                               [](const gguf_file & f) {
                                   py::dict d;
                                   for (const std::string & key : f.keys()) {
                                       d[to_py_str(key)] = kv_to_py(f, f.kv(key));
                                   }
                                   return d;
                               })
        .def("keys", [](const gguf_file & f) { return str_list(f.keys()); })
        .def_property_readonly("tensors",
                               [](const gguf_file & f) {
                                   py::list out;
                                   for (const gguf_tensor & t : f.tensors()) {
                                       out.append(tensor_to_py(t));
                                   }
                                   return out;
                               })
        .def(
            "tensor_bytes",
            [](const gguf_file & f, const py::str & name) {
                const gguf_tensor * t = f.find_tensor(from_py_str(name));
                if (t == nullptr) {
                    fail("%s: no tensor '%s'", f.path().c_str(), gguf_printable(from_py_str(name)).c_str());
                }
                py::array_t<uint8_t> out(py::ssize_t(t->n_bytes));
                std::memcpy(out.mutable_data(), t->data, t->n_bytes);
                return out;
            },
            py::arg("name"), "A copy of the tensor's raw bytes as a uint8 array.")
        .def("has", by_key(&gguf_file::has), py::arg("key"))
        .def(
            "type_of",
            [](const gguf_file & f, const py::str & key) {
                return gguf_type_name(f.type_of(from_py_str(key)));
            },
            py::arg("key"))
        .def(
            "arr_type_of",
            [](const gguf_file & f, const py::str & key) {
                return gguf_type_name(f.arr_type_of(from_py_str(key)));
            },
            py::arg("key"))
        .def("arr_len", by_key(&gguf_file::arr_len), py::arg("key"))
        .def("get_u32", by_key(&gguf_file::get_u32), py::arg("key"))
        .def("get_i64", by_key(&gguf_file::get_i64), py::arg("key"))
        .def("get_f32", by_key(&gguf_file::get_f32), py::arg("key"))
        .def("get_bool", by_key(&gguf_file::get_bool), py::arg("key"))
        .def(
            "get_str",
            [](const gguf_file & f, const py::str & key) { return to_py_str(f.get_str(from_py_str(key))); },
            py::arg("key"))
        .def(
            "get_u32_or",
            [](const gguf_file & f, const py::str & key, uint32_t fallback) {
                return f.get_u32_or(from_py_str(key), fallback);
            },
            py::arg("key"), py::arg("fallback"))
        .def(
            "get_f32_or",
            [](const gguf_file & f, const py::str & key, float fallback) {
                return f.get_f32_or(from_py_str(key), fallback);
            },
            py::arg("key"), py::arg("fallback"))
        .def(
            "get_str_or",
            [](const gguf_file & f, const py::str & key, const py::str & fallback) {
                return to_py_str(f.get_str_or(from_py_str(key), from_py_str(fallback)));
            },
            py::arg("key"), py::arg("fallback"))
        .def("get_arr_f32", by_key(&gguf_file::get_arr_f32), py::arg("key"))
        .def("get_arr_i32", by_key(&gguf_file::get_arr_i32), py::arg("key"))
        .def(
            "get_arr_str",
            [](const gguf_file & f, const py::str & key) {
                return str_list(f.get_arr_str(from_py_str(key)));
            },
            py::arg("key"))
        .def(
            "value_to_string",
            [](const gguf_file & f, const py::str & key, uint64_t max_arr) {
                return to_py_str(f.value_to_string(from_py_str(key), max_arr));
            },
            py::arg("key"), py::arg("max_arr") = 0);
}

}  // namespace tca
