#pragma once
// Errors are values at the API edge. The fields mirror Node's Error objects so a caller (or the
// CLI's JSON) can report exactly what Node would: `code` is Node's code name.
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace uvcluster {

struct Error {
  std::string code;                    // "ENOENT", "ERR_IPC_CHANNEL_CLOSED", ...
  std::string message;                 // Node's message text
  int errnum = 0;                      // negative libuv errno for system errors, else 0
  std::string syscall;                 // "spawn /bin/x", "write", ... (system errors only)
  std::string path;                    // spawn errors: the file
  std::vector<std::string> spawnargs;  // spawn errors: args without argv0

  // A system error from a negative libuv status, shaped like Node's errno exceptions:
  // message "<syscall> <path?> <CODE>".
  static Error from_uv(int status, std::string syscall, std::string path = {});
  // An error with a Node code name and message, e.g. ("ERR_IPC_DISCONNECTED", "...").
  static Error make(std::string code, std::string message);
};

// Minimal expected<T, E> (the toolchain is C++20): holds a value or an error.
template <class T, class E = Error>
class Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}
  Result(E error) : v_(std::in_place_index<1>, std::move(error)) {}

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T* operator->() { return &std::get<0>(v_); }
  const T* operator->() const { return &std::get<0>(v_); }
  T& operator*() { return std::get<0>(v_); }
  const E& error() const { return std::get<1>(v_); }
  E& error() { return std::get<1>(v_); }

 private:
  std::variant<T, E> v_;
};

// For operations that produce nothing but may fail.
struct Ok {};
using Status = Result<Ok>;

}  // namespace uvcluster
