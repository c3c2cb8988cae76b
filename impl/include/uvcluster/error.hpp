#pragma once
// Errors are values. The fields of Error mirror Node's Error objects so a caller (or the CLI's
// JSON) can report exactly what Node would: `code` is Node's code name.
//
// The one error convention, edges and interior alike:
//   * A function that can fail returns Result<T> (Status when there is no value), whose Error
//     names the failed syscall: a negative libuv/errno status becomes Error::from_uv(status,
//     "syscall") in the function that made the call (errno is read right after the system call
//     that set it, never by a caller), and its `errnum` keeps the number for callers that branch
//     on it (EAGAIN, EMFILE). Asynchronous failures arrive the same way: an Error in an error
//     event or a Result in a callback.
//   * An object whose setup can fail is made by a factory returning Result (`open`, `create`,
//     `start`), never by a constructor that stores an errno for later.
//   * Nothing throws across the event loop. A check that cannot fail on valid use aborts with a
//     message (UvHandle::must_init for the uv_*_init calls that cannot fail on a live loop);
//     every other uv_*_init result is returned as an Error.
//   * The one place a bare negative status travels: code that stands in for a libuv call keeps
//     that call's signature (PidfdChild::kill for uv_process_kill; the spawn path that falls
//     back to uv_spawn), and libuv's own callbacks, which receive one.
//   * Not used: `int&`/`int*` error out-parameters, errno read by a caller after a function
//     returned an invalid Fd, errno stored by constructors.
#include <string>
#include <type_traits>
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

// For operations that produce nothing but may fail.
struct Ok {};

template <class T, class E>
class Result;

namespace detail {
// Prints "uvcluster: <what>" on stderr and aborts: reading the wrong side of a Result is a bug in
// the caller, and an exception would have to unwind through libuv's C frames to reach anyone.
[[noreturn]] void bad_result_access(const char* what, const std::string& error);

template <class E>
std::string describe(const E& e) {
  if constexpr (requires { e.code + e.message; })
    return e.code + ": " + e.message;
  else if constexpr (requires { e.error.code + e.error.message; })
    return e.error.code + ": " + e.error.message;
  else
    return "(an error without a code)";
}

template <class R>
struct is_result : std::false_type {};
template <class T, class E>
struct is_result<Result<T, E>> : std::true_type {};
}  // namespace detail

// Minimal expected<T, E> (the toolchain is C++20): holds a value or an error. value() on an
// error and error() on a value abort with a message naming the error (see bad_result_access).
template <class T, class E = Error>
class Result {
 public:
  using value_type = T;
  using error_type = E;

  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}
  Result(E error) : v_(std::in_place_index<1>, std::move(error)) {}

  bool has_value() const { return v_.index() == 0; }
  bool ok() const { return has_value(); }
  explicit operator bool() const { return has_value(); }

  T& value() & { return check_value(), std::get<0>(v_); }
  const T& value() const& { return check_value(), std::get<0>(v_); }
  T&& value() && { return check_value(), std::get<0>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }

  E& error() & { return check_error(), std::get<1>(v_); }
  const E& error() const& { return check_error(), std::get<1>(v_); }
  E&& error() && { return check_error(), std::get<1>(std::move(v_)); }

  // The value, or `fallback` when this holds an error.
  template <class U>
  T value_or(U&& fallback) const& {
    return has_value() ? std::get<0>(v_) : static_cast<T>(std::forward<U>(fallback));
  }
  template <class U>
  T value_or(U&& fallback) && {
    return has_value() ? std::get<0>(std::move(v_)) : static_cast<T>(std::forward<U>(fallback));
  }

  // f(value) -> Result<U, E>: chains a step that can fail; an error passes through untouched.
  template <class F>
  auto and_then(F&& f) & {
    return chain<std::invoke_result_t<F, T&>>(std::forward<F>(f), *this);
  }
  template <class F>
  auto and_then(F&& f) const& {
    return chain<std::invoke_result_t<F, const T&>>(std::forward<F>(f), *this);
  }
  template <class F>
  auto and_then(F&& f) && {
    return chain<std::invoke_result_t<F, T&&>>(std::forward<F>(f), std::move(*this));
  }

  // f(value) -> U: Result<U, E> (Result<Ok, E> when f returns void); an error passes through.
  template <class F>
  auto transform(F&& f) & {
    return map<std::invoke_result_t<F, T&>>(std::forward<F>(f), *this);
  }
  template <class F>
  auto transform(F&& f) const& {
    return map<std::invoke_result_t<F, const T&>>(std::forward<F>(f), *this);
  }
  template <class F>
  auto transform(F&& f) && {
    return map<std::invoke_result_t<F, T&&>>(std::forward<F>(f), std::move(*this));
  }

 private:
  void check_value() const {
    if (!has_value())
      detail::bad_result_access("Result::value() on an error", detail::describe(std::get<1>(v_)));
  }
  void check_error() const {
    if (has_value()) detail::bad_result_access("Result::error() on a value", {});
  }

  template <class R, class F, class Self>
  static R chain(F&& f, Self&& self) {
    static_assert(detail::is_result<R>::value, "and_then: the function must return a Result");
    static_assert(std::is_same_v<typename R::error_type, E>, "and_then: the error types must match");
    if (!self.has_value()) return R(std::forward<Self>(self).error());
    return std::forward<F>(f)(*std::forward<Self>(self));
  }

  template <class U, class F, class Self>
  static auto map(F&& f, Self&& self) {
    using Out = std::conditional_t<std::is_void_v<U>, Ok, std::remove_cvref_t<U>>;
    if (!self.has_value()) return Result<Out, E>(std::forward<Self>(self).error());
    if constexpr (std::is_void_v<U>) {
      std::forward<F>(f)(*std::forward<Self>(self));
      return Result<Out, E>(Ok{});
    } else {
      return Result<Out, E>(std::forward<F>(f)(*std::forward<Self>(self)));
    }
  }

  std::variant<T, E> v_;
};

using Status = Result<Ok>;

}  // namespace uvcluster
