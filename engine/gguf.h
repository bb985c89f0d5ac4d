// GGUF reader: memory-maps a model file read-only and validates every count, length, type and offset
// of its header before anything is trusted or allocated. Versions 2 and 3, little-endian.
//
// Checked on open (a failure throws tca::error "<path>: <key or tensor>: <problem>"): the magic and
// version; the header's counts against the bytes that follow; every string and array inside the file;
// value types known, arrays not nested, BOOL bytes 0 or 1; no duplicate keys or tensor names;
// general.alignment a UINT32 power of two (default 32); per tensor: 1 <= n_dims <= 4, every ne >= 0
// (0 gives an empty tensor), a known ggml type with ne[0] a multiple of its block size, element and
// byte counts without overflow, the offset aligned and the data inside the file.
// The file must not be truncated on disk while open: reading the lost pages would raise SIGBUS.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "ggml_types.h"

namespace tca {

// Metadata value types, numbered as in the file.
enum class gguf_type : uint32_t {
    UINT8   = 0,
    INT8    = 1,
    UINT16  = 2,
    INT16   = 3,
    UINT32  = 4,
    INT32   = 5,
    FLOAT32 = 6,
    BOOL    = 7,
    STRING  = 8,
    ARRAY   = 9,
    UINT64  = 10,
    INT64   = 11,
    FLOAT64 = 12,
};

// "UINT32", "STRING", ...; "?" for an id outside the enum.
const char * gguf_type_name(gguf_type type);

// Bytes of one value of a fixed-size type; 0 for STRING and ARRAY.
size_t gguf_type_size(gguf_type type);

// A fixed-size value (any type but STRING and ARRAY) decoded from possibly unaligned bytes: integers
// as i (signed) or u (unsigned), FLOAT32/FLOAT64 as f, BOOL as b.
struct gguf_number {
    enum class kind { sint, uint, real, boolean } k;
    int64_t i  = 0;
    uint64_t u = 0;
    double f   = 0.0;
    bool b     = false;
};
gguf_number gguf_read_number(gguf_type type, const uint8_t * p);

// A key or tensor name from a file, made safe for an error message: control bytes and invalid UTF-8
// become \xNN (messages must decode as UTF-8 in Python) and names past 200 bytes are cut.
std::string gguf_printable(const std::string & s);

// One validated tensor info.
struct gguf_tensor {
    std::string name;
    int n_dims;     // 1..4
    int64_t ne[4];  // elements per dimension, ne[0] fastest; unused dims are 1
    ggml_type type;
    uint64_t offset;       // relative to the data section, a multiple of the alignment
    uint64_t n_bytes;      // ne[0] / block_size * type_size * ne[1] * ne[2] * ne[3]
    const uint8_t * data;  // points into the mmap, n_bytes long
};

// One metadata key/value pair. Scalars are decoded on open; arrays stay in the mmap and are decoded
// by the getters (their extent was validated on open).
struct gguf_kv {
    std::string key;
    gguf_type type;
    gguf_type arr_type;  // element type when type == ARRAY
    uint64_t arr_len;    // element count when type == ARRAY
    uint64_t u64;        // unsigned integers and BOOL
    int64_t i64;         // signed integers
    double f64;          // FLOAT32 / FLOAT64
    std::string str;     // STRING
    // First array element, in the mmap. Fixed-size elements lie packed, little-endian (read them with
    // memcpy: they may be unaligned); STRING elements are each a u64 length and that many bytes.
    const uint8_t * arr_data;
};

class gguf_file {
  public:
    // Maps and validates the file; throws tca::error whose message starts with the path.
    static std::unique_ptr<gguf_file> open(const std::string & path);
    ~gguf_file();
    gguf_file(const gguf_file &)             = delete;
    gguf_file & operator=(const gguf_file &) = delete;

    const std::string & path() const { return path_; }
    uint32_t version() const { return version_; }
    size_t file_size() const { return size_; }
    uint32_t alignment() const { return alignment_; }   // general.alignment, default 32
    uint64_t data_offset() const { return data_pos_; }  // file offset of the data section

    bool has(const std::string & key) const;
    gguf_type type_of(const std::string & key) const;      // throws if missing
    gguf_type arr_type_of(const std::string & key) const;  // element type of an array key
    uint64_t arr_len(const std::string & key) const;

    // Typed getters throw a tca::error naming the key when it is missing or of another type.
    // get_u32 and get_i64 accept any integer type whose value fits (not BOOL); get_f32 accepts
    // FLOAT32/FLOAT64.
    uint32_t get_u32(const std::string & key) const;
    int64_t get_i64(const std::string & key) const;
    float get_f32(const std::string & key) const;
    bool get_bool(const std::string & key) const;
    std::string get_str(const std::string & key) const;

    // Optional variants return the fallback when the key is absent (still throw on a wrong type).
    uint32_t get_u32_or(const std::string & key, uint32_t fallback) const;
    float get_f32_or(const std::string & key, float fallback) const;
    std::string get_str_or(const std::string & key, std::string fallback) const;

    // Arrays: the element type must match exactly (tokenizer.ggml.scores must be FLOAT32, ...).
    std::vector<float> get_arr_f32(const std::string & key) const;
    std::vector<int32_t> get_arr_i32(const std::string & key) const;
    std::vector<std::string> get_arr_str(const std::string & key) const;

    std::vector<std::string> keys() const;              // in file order
    const gguf_kv & kv(const std::string & key) const;  // throws if missing

    // Scalars as llama.cpp prints them (integers in decimal, floats with std::to_string, bools as
    // true/false, strings raw); arrays as "[N x TYPE]".
    std::string value_to_string(const std::string & key) const;
    // Same, but arrays of at most max_arr elements are written out: [1, 2, 3] or ["a", "b"]
    // (strings quoted, '"' and '\' escaped).
    std::string value_to_string(const std::string & key, uint64_t max_arr) const;

    const std::vector<gguf_tensor> & tensors() const { return tensors_; }
    const gguf_tensor * find_tensor(const std::string & name) const;  // nullptr when absent

  private:
    gguf_file() = default;
    void parse();

    std::string path_;
    const uint8_t * base_ = nullptr;  // the mmap, size_ bytes
    size_t size_          = 0;
    uint32_t version_     = 0;
    uint32_t alignment_   = 32;
    uint64_t data_pos_    = 0;
    std::vector<gguf_kv> kvs_;  // in file order
    std::unordered_map<std::string, size_t> kv_index_;
    std::vector<gguf_tensor> tensors_;  // in file order
    std::unordered_map<std::string, size_t> tensor_index_;
};

}  // namespace tca
