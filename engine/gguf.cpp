#include "gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstring>
#include <limits>

#include "common.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the GGUF reader assumes a little-endian host");

namespace tca {

namespace {

// Name and size in bytes (0: variable) of each value type, indexed by its id.
struct gguf_type_entry {
    const char * name;
    size_t size;
};
constexpr gguf_type_entry k_type_table[] = {
    {"UINT8", 1}, {"INT8", 1},   {"UINT16", 2}, {"INT16", 2},  {"UINT32", 4}, {"INT32", 4},   {"FLOAT32", 4},
    {"BOOL", 1},  {"STRING", 0}, {"ARRAY", 0},  {"UINT64", 8}, {"INT64", 8},  {"FLOAT64", 8},
};
constexpr uint32_t k_n_types = sizeof(k_type_table) / sizeof(k_type_table[0]);

}  // namespace

const char * gguf_type_name(gguf_type type) {
    return uint32_t(type) < k_n_types ? k_type_table[uint32_t(type)].name : "?";
}

size_t gguf_type_size(gguf_type type) {
    return uint32_t(type) < k_n_types ? k_type_table[uint32_t(type)].size : 0;
}

gguf_number gguf_read_number(gguf_type type, const uint8_t * p) {
    union {
        uint8_t u8;
        int8_t i8;
        uint16_t u16;
        int16_t i16;
        uint32_t u32;
        int32_t i32;
        uint64_t u64;
        int64_t i64;
        float f32;
        double f64;
    } v;
    std::memcpy(&v, p, gguf_type_size(type));
    gguf_number n{gguf_number::kind::sint};
    switch (type) {
        case gguf_type::UINT8:
            n.k = gguf_number::kind::uint;
            n.u = v.u8;
            break;
        case gguf_type::UINT16:
            n.k = gguf_number::kind::uint;
            n.u = v.u16;
            break;
        case gguf_type::UINT32:
            n.k = gguf_number::kind::uint;
            n.u = v.u32;
            break;
        case gguf_type::UINT64:
            n.k = gguf_number::kind::uint;
            n.u = v.u64;
            break;
        case gguf_type::INT8:
            n.i = v.i8;
            break;
        case gguf_type::INT16:
            n.i = v.i16;
            break;
        case gguf_type::INT32:
            n.i = v.i32;
            break;
        case gguf_type::INT64:
            n.i = v.i64;
            break;
        case gguf_type::FLOAT32:
            n.k = gguf_number::kind::real;
            n.f = v.f32;
            break;
        case gguf_type::FLOAT64:
            n.k = gguf_number::kind::real;
            n.f = v.f64;
            break;
        case gguf_type::BOOL:
            n.k = gguf_number::kind::boolean;
            n.b = v.u8 != 0;
            break;
        case gguf_type::STRING:
        case gguf_type::ARRAY:
            fail("gguf_read_number: %s is not a fixed-size type", gguf_type_name(type));
    }
    return n;
}

namespace {

// Smallest possible encodings, used to bound the counts in the header by the bytes that follow.
constexpr uint64_t k_min_kv_bytes     = 8 + 4 + 1;          // empty key, type, one-byte value
constexpr uint64_t k_min_tensor_bytes = 8 + 4 + 8 + 4 + 8;  // empty name, n_dims, one ne, type, offset

bool is_unsigned_int(gguf_type t) {
    return t == gguf_type::UINT8 || t == gguf_type::UINT16 || t == gguf_type::UINT32 ||
           t == gguf_type::UINT64;
}

bool is_signed_int(gguf_type t) {
    return t == gguf_type::INT8 || t == gguf_type::INT16 || t == gguf_type::INT32 || t == gguf_type::INT64;
}

// Length of the valid UTF-8 sequence at s[i] (RFC 3629: no overlongs, surrogates or code points past
// U+10FFFF), or 0 when the bytes there are not one.
size_t utf8_len(const std::string & s, size_t i) {
    const auto at    = [&](size_t k) { return i + k < s.size() ? uint8_t(s[i + k]) : 0; };
    const auto in    = [](uint8_t b, uint8_t lo, uint8_t hi) { return b >= lo && b <= hi; };
    const uint8_t b0 = at(0);
    if (b0 < 0x80) {
        return 1;
    }
    size_t n   = 0;
    uint8_t lo = 0x80, hi = 0xbf;  // range of the second byte
    if (in(b0, 0xc2, 0xdf)) {
        n = 2;
    } else if (in(b0, 0xe0, 0xef)) {
        n  = 3;
        lo = b0 == 0xe0 ? 0xa0 : 0x80;
        hi = b0 == 0xed ? 0x9f : 0xbf;
    } else if (in(b0, 0xf0, 0xf4)) {
        n  = 4;
        lo = b0 == 0xf0 ? 0x90 : 0x80;
        hi = b0 == 0xf4 ? 0x8f : 0xbf;
    } else {
        return 0;
    }
    if (!in(at(1), lo, hi)) {
        return 0;
    }
    for (size_t k = 2; k < n; ++k) {
        if (!in(at(k), 0x80, 0xbf)) {
            return 0;
        }
    }
    return n;
}

}  // namespace

std::string gguf_printable(const std::string & s) {
    constexpr size_t k_max_shown = 200;
    std::string out;
    for (size_t i = 0; i < s.size();) {
        if (out.size() >= k_max_shown) {
            return out + strfmt("...(%zu bytes)", s.size());
        }
        const size_t n = utf8_len(s, i);
        if (n == 0 || (n == 1 && (uint8_t(s[i]) < 0x20 || s[i] == 0x7f))) {
            out += strfmt("\\x%02x", uint8_t(s[i]));
            i += 1;
        } else {
            out.append(s, i, n);
            i += n;
        }
    }
    return out;
}

namespace {

// Bounds-checked reads over the mapped file. Every read first checks that its bytes lie inside the
// file, so nothing is allocated or copied on the word of an unchecked length. Errors name the path and
// what was being read (`where`, set by the parser as it goes).
struct gguf_cursor {
    const std::string & path;
    const uint8_t * base;
    size_t size;
    size_t pos = 0;
    std::string where;  // "KV pair 3", "key 'general.name'", "tensor 'output.weight'"

    size_t left() const { return size - pos; }

    [[noreturn]] void fail_here(const std::string & problem) const {
        if (where.empty()) {
            fail("%s: %s", path.c_str(), problem.c_str());
        }
        fail("%s: %s: %s", path.c_str(), where.c_str(), problem.c_str());
    }

    void need(uint64_t n, const char * what) const {
        if (n > left()) {
            fail_here(strfmt("file truncated: %s needs %" PRIu64 " bytes at offset %zu but only %zu are left "
                             "(file size %zu)",
                             what, n, pos, left(), size));
        }
    }

    template <typename T>
    T read(const char * what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, base + pos, sizeof(T));
        pos += sizeof(T);
        return v;
    }

    std::string read_str(const char * what) {
        const uint64_t n = read<uint64_t>(what);
        need(n, what);
        std::string s(reinterpret_cast<const char *>(base + pos), size_t(n));
        pos += size_t(n);
        return s;
    }
};

// Reads one value of a non-array type into kv.
void read_scalar(gguf_cursor & c, gguf_type type, gguf_kv & kv) {
    switch (type) {
        case gguf_type::UINT8:
            kv.u64 = c.read<uint8_t>("UINT8 value");
            break;
        case gguf_type::UINT16:
            kv.u64 = c.read<uint16_t>("UINT16 value");
            break;
        case gguf_type::UINT32:
            kv.u64 = c.read<uint32_t>("UINT32 value");
            break;
        case gguf_type::UINT64:
            kv.u64 = c.read<uint64_t>("UINT64 value");
            break;
        case gguf_type::INT8:
            kv.i64 = c.read<int8_t>("INT8 value");
            break;
        case gguf_type::INT16:
            kv.i64 = c.read<int16_t>("INT16 value");
            break;
        case gguf_type::INT32:
            kv.i64 = c.read<int32_t>("INT32 value");
            break;
        case gguf_type::INT64:
            kv.i64 = c.read<int64_t>("INT64 value");
            break;
        case gguf_type::FLOAT32:
            kv.f64 = c.read<float>("FLOAT32 value");
            break;
        case gguf_type::FLOAT64:
            kv.f64 = c.read<double>("FLOAT64 value");
            break;
        case gguf_type::BOOL:
            // Only 0 and 1 are booleans; any other byte means the file is not what it claims to be.
            kv.u64 = c.read<uint8_t>("BOOL value");
            if (kv.u64 > 1) {
                c.fail_here(strfmt("BOOL value byte %" PRIu64 " is neither 0 nor 1", kv.u64));
            }
            break;
        case gguf_type::STRING:
            kv.str = c.read_str("STRING value");
            break;
        case gguf_type::ARRAY:
            break;
    }
}

// Checks an array's extent (and its strings' lengths and bools' bytes) and steps over it. Nothing is
// allocated: the getters decode from the mmap later.
void skip_array(gguf_cursor & c, gguf_kv & kv) {
    const uint32_t elem = c.read<uint32_t>("array element type");
    if (elem >= k_n_types) {
        c.fail_here(strfmt("unknown array element type id %u", elem));
    }
    kv.arr_type = gguf_type(elem);
    if (kv.arr_type == gguf_type::ARRAY) {
        c.fail_here("nested arrays (arrays of arrays) are not supported");
    }
    kv.arr_len  = c.read<uint64_t>("array length");
    kv.arr_data = c.base + c.pos;

    const size_t elem_size = gguf_type_size(kv.arr_type);
    if (elem_size > 0) {
        if (kv.arr_len > c.left() / elem_size) {
            c.fail_here(strfmt("array of %" PRIu64
                               " %s elements (%zu bytes each) runs past the end of the file "
                               "(%zu bytes left at offset %zu)",
                               kv.arr_len, gguf_type_name(kv.arr_type), elem_size, c.left(), c.pos));
        }
        if (kv.arr_type == gguf_type::BOOL) {
            for (uint64_t i = 0; i < kv.arr_len; ++i) {
                if (c.base[c.pos + i] > 1) {
                    c.fail_here(strfmt("BOOL array element %" PRIu64 " is byte %u, neither 0 nor 1", i,
                                       c.base[c.pos + i]));
                }
            }
        }
        c.pos += size_t(kv.arr_len * elem_size);
        return;
    }

    // STRING elements: each needs at least its 8-byte length.
    if (kv.arr_len > c.left() / 8) {
        c.fail_here(strfmt("array of %" PRIu64 " strings runs past the end of the file (%zu bytes left at "
                           "offset %zu)",
                           kv.arr_len, c.left(), c.pos));
    }
    for (uint64_t i = 0; i < kv.arr_len; ++i) {
        if (c.left() < 8) {
            c.fail_here(
                strfmt("file truncated in string %" PRIu64 " of the array of %" PRIu64, i, kv.arr_len));
        }
        uint64_t n;
        std::memcpy(&n, c.base + c.pos, 8);
        c.pos += 8;
        if (n > c.left()) {
            c.fail_here(strfmt("string %" PRIu64 " of the array has length %" PRIu64
                               ", past the end of the file (%zu bytes left at offset %zu)",
                               i, n, c.left(), c.pos));
        }
        c.pos += size_t(n);
    }
}

// Reads and checks the rest of a tensor info after its name: n_dims, ne[n_dims], type, offset. Sets
// n_bytes; the data is placed once the data section's start is known.
void read_tensor_info(gguf_cursor & c, uint32_t alignment, gguf_tensor & t) {
    const uint32_t n_dims = c.read<uint32_t>("n_dims");
    if (n_dims < 1 || n_dims > 4) {
        c.fail_here(strfmt("n_dims %u is not between 1 and 4", n_dims));
    }
    t.n_dims = int(n_dims);
    for (int d = 0; d < 4; ++d) {
        t.ne[d] = 1;
    }
    for (int d = 0; d < t.n_dims; ++d) {
        t.ne[d] = c.read<int64_t>("ne");
        if (t.ne[d] < 0) {
            c.fail_here(strfmt("ne[%d] = %" PRId64 " is negative", d, t.ne[d]));
        }
    }
    const uint32_t type_id = c.read<uint32_t>("tensor type");
    t.offset               = c.read<uint64_t>("tensor data offset");

    const ggml_type_traits * tt = ggml_type_traits_get(type_id);
    if (tt == nullptr) {
        c.fail_here(strfmt("unknown tensor type id %u", type_id));
    }
    t.type = ggml_type(type_id);
    if (t.ne[0] % tt->block_size != 0) {
        c.fail_here(strfmt("ne[0] = %" PRId64 " is not a multiple of the block size %" PRId64 " of type %s",
                           t.ne[0], tt->block_size, tt->name));
    }
    int64_t n_elements = 1;
    for (int d = 0; d < 4; ++d) {
        if (t.ne[d] != 0 && n_elements > std::numeric_limits<int64_t>::max() / t.ne[d]) {
            c.fail_here(strfmt("element count overflows: ne = [%" PRId64 ", %" PRId64 ", %" PRId64
                               ", %" PRId64 "]",
                               t.ne[0], t.ne[1], t.ne[2], t.ne[3]));
        }
        n_elements *= t.ne[d];
    }
    const uint64_t n_blocks = uint64_t(n_elements / tt->block_size);
    if (n_blocks > std::numeric_limits<uint64_t>::max() / tt->type_size) {
        c.fail_here(strfmt("byte count overflows: %" PRIu64 " blocks of %zu bytes", n_blocks, tt->type_size));
    }
    t.n_bytes = n_blocks * tt->type_size;
    if (t.offset % alignment != 0) {
        c.fail_here(
            strfmt("data offset %" PRIu64 " is not a multiple of the alignment %u", t.offset, alignment));
    }
}

}  // namespace

std::unique_ptr<gguf_file> gguf_file::open(const std::string & path) {
    // stat before open: opening a FIFO for reading would block.
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) {
        fail("%s: cannot open: %s", path.c_str(), std::strerror(errno));
    }
    if (S_ISDIR(st.st_mode)) {
        fail("%s: is a directory, not a GGUF file", path.c_str());
    }
    if (!S_ISREG(st.st_mode)) {
        fail("%s: not a regular file", path.c_str());
    }
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fail("%s: cannot open: %s", path.c_str(), std::strerror(errno));
    }
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        fail("%s: not a regular file", path.c_str());
    }
    if (st.st_size == 0) {
        ::close(fd);
        fail("%s: empty file (0 bytes), not a GGUF file", path.c_str());
    }
    void * map          = ::mmap(nullptr, size_t(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
    const int map_errno = errno;
    ::close(fd);
    if (map == MAP_FAILED) {
        fail("%s: cannot mmap %lld bytes: %s", path.c_str(), (long long)st.st_size, std::strerror(map_errno));
    }

    std::unique_ptr<gguf_file> f(new gguf_file());
    f->path_ = path;
    f->base_ = static_cast<const uint8_t *>(map);
    f->size_ = size_t(st.st_size);
    f->parse();
    return f;
}

gguf_file::~gguf_file() {
    if (base_ != nullptr) {
        ::munmap(const_cast<uint8_t *>(base_), size_);
    }
}

void gguf_file::parse() {
    gguf_cursor c{path_, base_, size_, 0, {}};

    // Header: magic, version, tensor count, KV count.
    if (size_ < 4 || std::memcmp(base_, "GGUF", 4) != 0) {
        std::string shown;
        for (size_t i = 0; i < 4 && i < size_; ++i) {
            shown += strfmt("%02x", base_[i]);
        }
        fail("%s: not a GGUF file (the first bytes are 0x%s, not \"GGUF\")", path_.c_str(), shown.c_str());
    }
    c.pos    = 4;
    version_ = c.read<uint32_t>("version");
    if (version_ == 1) {
        fail("%s: GGUF version 1 is not supported (only versions 2 and 3)", path_.c_str());
    }
    if (version_ != 2 && version_ != 3) {
        const uint32_t swapped = __builtin_bswap32(version_);
        if (swapped == 2 || swapped == 3) {
            fail("%s: big-endian GGUF files are not supported", path_.c_str());
        }
        fail("%s: unsupported GGUF version %u (only versions 2 and 3)", path_.c_str(), version_);
    }
    const uint64_t n_tensors = c.read<uint64_t>("tensor count");
    const uint64_t n_kv      = c.read<uint64_t>("KV count");
    if (n_kv > c.left() / k_min_kv_bytes) {
        fail("%s: header claims %" PRIu64 " KV pairs but only %zu bytes follow", path_.c_str(), n_kv,
             c.left());
    }
    if (n_tensors > c.left() / k_min_tensor_bytes ||
        n_kv * k_min_kv_bytes + n_tensors * k_min_tensor_bytes > c.left()) {
        fail("%s: header claims %" PRIu64 " tensors and %" PRIu64 " KV pairs but only %zu bytes follow",
             path_.c_str(), n_tensors, n_kv, c.left());
    }

    // Metadata.
    for (uint64_t i = 0; i < n_kv; ++i) {
        c.where = strfmt("KV pair %" PRIu64, i);
        gguf_kv kv{};
        kv.key  = c.read_str("key");
        c.where = "key '" + gguf_printable(kv.key) + "'";
        if (kv_index_.count(kv.key) != 0) {
            c.fail_here("duplicate key");
        }
        const uint32_t type = c.read<uint32_t>("value type");
        if (type >= k_n_types) {
            c.fail_here(strfmt("unknown value type id %u", type));
        }
        kv.type = gguf_type(type);
        if (kv.type == gguf_type::ARRAY) {
            skip_array(c, kv);
        } else {
            read_scalar(c, kv.type, kv);
        }
        kv_index_.emplace(kv.key, kvs_.size());
        kvs_.push_back(std::move(kv));
    }
    c.where.clear();

    if (has("general.alignment")) {
        const gguf_kv & a = kv("general.alignment");
        if (a.type != gguf_type::UINT32) {
            fail("%s: key 'general.alignment' is %s, expected UINT32", path_.c_str(), gguf_type_name(a.type));
        }
        if (a.u64 == 0 || (a.u64 & (a.u64 - 1)) != 0) {
            fail("%s: key 'general.alignment' = %" PRIu64 " is not a power of two", path_.c_str(), a.u64);
        }
        alignment_ = uint32_t(a.u64);
    }

    // Tensor infos: name, n_dims, ne[n_dims], type, offset.
    for (uint64_t i = 0; i < n_tensors; ++i) {
        c.where = strfmt("tensor info %" PRIu64, i);
        gguf_tensor t{};
        t.name  = c.read_str("tensor name");
        c.where = "tensor '" + gguf_printable(t.name) + "'";
        if (tensor_index_.count(t.name) != 0) {
            c.fail_here("duplicate tensor name");
        }
        read_tensor_info(c, alignment_, t);
        tensor_index_.emplace(t.name, tensors_.size());
        tensors_.push_back(std::move(t));
    }
    c.where.clear();

    // The data section starts at the next multiple of the alignment; every tensor must lie inside it.
    data_pos_ = (uint64_t(c.pos) + alignment_ - 1) / alignment_ * alignment_;
    if (!tensors_.empty() && data_pos_ > size_) {
        fail("%s: the data section would start at offset %" PRIu64 ", past the end of the file (size %zu)",
             path_.c_str(), data_pos_, size_);
    }
    for (gguf_tensor & t : tensors_) {
        const uint64_t data_size = size_ - data_pos_;
        if (t.offset > data_size || t.n_bytes > data_size - t.offset) {
            fail("%s: tensor '%s': data [offset %" PRIu64 ", %" PRIu64
                 " bytes) lies outside the file (size %zu, "
                 "data section at %" PRIu64 ")",
                 path_.c_str(), gguf_printable(t.name).c_str(), t.offset, t.n_bytes, size_, data_pos_);
        }
        t.data = base_ + data_pos_ + t.offset;
    }
}

bool gguf_file::has(const std::string & key) const {
    return kv_index_.count(key) != 0;
}

const gguf_kv & gguf_file::kv(const std::string & key) const {
    const auto it = kv_index_.find(key);
    if (it == kv_index_.end()) {
        fail("%s: key '%s' not found", path_.c_str(), gguf_printable(key).c_str());
    }
    return kvs_[it->second];
}

gguf_type gguf_file::type_of(const std::string & key) const {
    return kv(key).type;
}

gguf_type gguf_file::arr_type_of(const std::string & key) const {
    const gguf_kv & v = kv(key);
    if (v.type != gguf_type::ARRAY) {
        fail("%s: key '%s' is %s, expected ARRAY", path_.c_str(), gguf_printable(key).c_str(),
             gguf_type_name(v.type));
    }
    return v.arr_type;
}

uint64_t gguf_file::arr_len(const std::string & key) const {
    arr_type_of(key);
    return kv(key).arr_len;
}

namespace {

[[noreturn]] void fail_type(const std::string & path, const gguf_kv & v, const char * expected) {
    if (v.type == gguf_type::ARRAY) {
        fail("%s: key '%s' is ARRAY of %s, expected %s", path.c_str(), gguf_printable(v.key).c_str(),
             gguf_type_name(v.arr_type), expected);
    }
    fail("%s: key '%s' is %s, expected %s", path.c_str(), gguf_printable(v.key).c_str(),
         gguf_type_name(v.type), expected);
}

// The value of an integer key as a decimal string, for messages.
std::string int_to_string(const gguf_kv & v) {
    return is_signed_int(v.type) ? std::to_string(v.i64) : std::to_string(v.u64);
}

// Checks that v is an array of `elem` and returns its first element.
const uint8_t * arr_of(const std::string & path, const gguf_kv & v, gguf_type elem, const char * expected) {
    if (v.type != gguf_type::ARRAY || v.arr_type != elem) {
        fail_type(path, v, expected);
    }
    return v.arr_data;
}

std::string quoted(const std::string & s) {
    std::string out = "\"";
    for (char ch : s) {
        if (ch == '"' || ch == '\\') {
            out += '\\';
        }
        out += ch;
    }
    return out + '"';
}

// One element of a fixed-size array, formatted like a scalar of its type.
std::string arr_elem_to_string(gguf_type type, const uint8_t * p) {
    const gguf_number n = gguf_read_number(type, p);
    switch (n.k) {
        case gguf_number::kind::sint:
            return std::to_string(n.i);
        case gguf_number::kind::uint:
            return std::to_string(n.u);
        case gguf_number::kind::real:
            return std::to_string(n.f);
        case gguf_number::kind::boolean:
            return n.b ? "true" : "false";
    }
    return "?";
}

}  // namespace

uint32_t gguf_file::get_u32(const std::string & key) const {
    const gguf_kv & v  = kv(key);
    const uint64_t max = std::numeric_limits<uint32_t>::max();
    if (is_unsigned_int(v.type) && v.u64 <= max) {
        return uint32_t(v.u64);
    }
    if (is_signed_int(v.type) && v.i64 >= 0 && uint64_t(v.i64) <= max) {
        return uint32_t(v.i64);
    }
    if (is_unsigned_int(v.type) || is_signed_int(v.type)) {
        fail("%s: key '%s' = %s does not fit in UINT32", path_.c_str(), gguf_printable(key).c_str(),
             int_to_string(v).c_str());
    }
    fail_type(path_, v, "an integer");
}

int64_t gguf_file::get_i64(const std::string & key) const {
    const gguf_kv & v = kv(key);
    if (is_signed_int(v.type)) {
        return v.i64;
    }
    if (is_unsigned_int(v.type) && v.u64 <= uint64_t(std::numeric_limits<int64_t>::max())) {
        return int64_t(v.u64);
    }
    if (is_unsigned_int(v.type)) {
        fail("%s: key '%s' = %s does not fit in INT64", path_.c_str(), gguf_printable(key).c_str(),
             int_to_string(v).c_str());
    }
    fail_type(path_, v, "an integer");
}

float gguf_file::get_f32(const std::string & key) const {
    const gguf_kv & v = kv(key);
    if (v.type != gguf_type::FLOAT32 && v.type != gguf_type::FLOAT64) {
        fail_type(path_, v, "FLOAT32 or FLOAT64");
    }
    return float(v.f64);
}

bool gguf_file::get_bool(const std::string & key) const {
    const gguf_kv & v = kv(key);
    if (v.type != gguf_type::BOOL) {
        fail_type(path_, v, "BOOL");
    }
    return v.u64 != 0;
}

std::string gguf_file::get_str(const std::string & key) const {
    const gguf_kv & v = kv(key);
    if (v.type != gguf_type::STRING) {
        fail_type(path_, v, "STRING");
    }
    return v.str;
}

uint32_t gguf_file::get_u32_or(const std::string & key, uint32_t fallback) const {
    return has(key) ? get_u32(key) : fallback;
}

float gguf_file::get_f32_or(const std::string & key, float fallback) const {
    return has(key) ? get_f32(key) : fallback;
}

std::string gguf_file::get_str_or(const std::string & key, std::string fallback) const {
    return has(key) ? get_str(key) : fallback;
}

std::vector<float> gguf_file::get_arr_f32(const std::string & key) const {
    const gguf_kv & v = kv(key);
    const uint8_t * p = arr_of(path_, v, gguf_type::FLOAT32, "ARRAY of FLOAT32");
    std::vector<float> out(v.arr_len);
    if (!out.empty()) {
        std::memcpy(out.data(), p, out.size() * sizeof(float));
    }
    return out;
}

std::vector<int32_t> gguf_file::get_arr_i32(const std::string & key) const {
    const gguf_kv & v = kv(key);
    const uint8_t * p = arr_of(path_, v, gguf_type::INT32, "ARRAY of INT32");
    std::vector<int32_t> out(v.arr_len);
    if (!out.empty()) {
        std::memcpy(out.data(), p, out.size() * sizeof(int32_t));
    }
    return out;
}

std::vector<std::string> gguf_file::get_arr_str(const std::string & key) const {
    const gguf_kv & v = kv(key);
    const uint8_t * p = arr_of(path_, v, gguf_type::STRING, "ARRAY of STRING");
    // The lengths were checked against the file on open.
    std::vector<std::string> out(v.arr_len);
    for (std::string & s : out) {
        uint64_t n;
        std::memcpy(&n, p, 8);
        s.assign(reinterpret_cast<const char *>(p + 8), size_t(n));
        p += 8 + n;
    }
    return out;
}

std::vector<std::string> gguf_file::keys() const {
    std::vector<std::string> out;
    out.reserve(kvs_.size());
    for (const gguf_kv & v : kvs_) {
        out.push_back(v.key);
    }
    return out;
}

std::string gguf_file::value_to_string(const std::string & key) const {
    return value_to_string(key, 0);
}

std::string gguf_file::value_to_string(const std::string & key, uint64_t max_arr) const {
    const gguf_kv & v = kv(key);
    if (is_unsigned_int(v.type) || is_signed_int(v.type)) {
        return int_to_string(v);
    }
    switch (v.type) {
        case gguf_type::FLOAT32:
            return std::to_string(float(v.f64));
        case gguf_type::FLOAT64:
            return std::to_string(v.f64);
        case gguf_type::BOOL:
            return v.u64 != 0 ? "true" : "false";
        case gguf_type::STRING:
            return v.str;
        default:
            break;
    }
    if (v.arr_len > max_arr) {
        return strfmt("[%" PRIu64 " x %s]", v.arr_len, gguf_type_name(v.arr_type));
    }
    std::string out = "[";
    if (v.arr_type == gguf_type::STRING) {
        const std::vector<std::string> items = get_arr_str(key);
        for (size_t i = 0; i < items.size(); ++i) {
            out += (i > 0 ? ", " : "") + quoted(items[i]);
        }
    } else {
        const size_t elem_size = gguf_type_size(v.arr_type);
        for (uint64_t i = 0; i < v.arr_len; ++i) {
            out += (i > 0 ? ", " : "") + arr_elem_to_string(v.arr_type, v.arr_data + i * elem_size);
        }
    }
    return out + "]";
}

const gguf_tensor * gguf_file::find_tensor(const std::string & name) const {
    const auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace tca
