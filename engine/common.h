// Shared basics for the runtime: the error type every layer throws, and formatting.
#pragma once

#include <cstdarg>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace tca {

// The one exception type of the runtime. Its message names the file, key, tensor or flag at fault;
// the Python binding turns it into tca.TcaError, the commands into one line on stderr and exit 1.
struct error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// printf-style formatting into a std::string.
std::string strfmt(const char * fmt, ...) __attribute__((format(printf, 1, 2)));

// Throws tca::error with a printf-style message.
[[noreturn]] void fail(const char * fmt, ...) __attribute__((format(printf, 1, 2)));

}  // namespace tca
