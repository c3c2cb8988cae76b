#pragma once
// Node's 'advanced' IPC serialization (docs/protocol.md §1.3): a frame is a 4-byte big-endian
// payload length, then the payload: V8 ValueSerializer output (header FF 0F, one value). Buffers
// and typed arrays are host objects written by Node's serializer. Independent of libuv so it can
// be unit tested and fuzzed.
//
// Value model. Messages stay ipc::Json (nlohmann::json) in both modes; JSON values map to
// themselves (a Json array is a dense JS array, an object a plain object, integers in int32
// range are V8 int32s, other numbers doubles). A JS value JSON cannot hold is an object whose
// "$v8" member names its kind:
//   {"$v8":"undefined"}                          undefined
//   {"$v8":"hole"}                               a hole, only as an element of a Json array
//   {"$v8":"number","value":"NaN"}               NaN, "Infinity", "-Infinity", "-0" (decoded
//                                                values are plain doubles; this is the text form)
//   {"$v8":"BigInt","value":"-123"}              decimal digits
//   {"$v8":"Date","value":1.5e12}                ms since the epoch
//   {"$v8":"RegExp","source":"a+","flags":"gi"}  flags from "dgimsuvy"
//   {"$v8":"Map","entries":[[k,v],...]}          in insertion order
//   {"$v8":"Set","values":[v,...]}
//   {"$v8":"Array","length":n,"properties":{"7":v,"name":v}}   a sparse array (or one with
//                                                named properties): length plus own properties
//   {"$v8":"Object","value":{...}}               a plain object that itself has a "$v8" key
//   {"$v8":"Boolean"|"Number"|"String"|"BigIntObject","value":v}   boxed primitives
//   {"$v8":"Error","name":"TypeError","message":"m","stack":"...","cause":v}  (name, stack,
//                                                cause optional; name one of JS's Error kinds)
//   {"$v8":"ArrayBuffer"|"Buffer"|"Uint8Array"|...,"data":bytes}   bytes as a Json binary
//                                                (decoded) or a hex string (accepted on send);
//                                                views: Int8Array Uint8Array Uint8ClampedArray
//                                                Int16Array Uint16Array Int32Array Uint32Array
//                                                Float32Array Float64Array DataView Buffer
//                                                BigInt64Array BigUint64Array
//   {"$v8":"ref","path":"/a/0"}                  the object already at that JSON Pointer
//                                                (RFC 6901) from the message root: shared and
//                                                circular references ("" is the root itself)
// A reference points at the place the object first occurs in the decoded tree; paths walk the
// representation above ("/m/entries/0/1" is the first Map value). In a NODE_HANDLE frame, paths
// are relative to the user message it carries (what on_message gets).
//
// Bounds and errors (never a throw, never a crash):
//   * payload that is not V8 data, a version other than 13..15, an unknown or unsupported tag
//     (SharedArrayBuffer, WebAssembly, shared objects, resizable buffers), truncated data, a bad
//     back-reference → ERR_IPC_BAD_FRAME naming the problem and the byte offset; the frame is
//     skipped (the length prefix keeps the stream in sync).
//   * nesting deeper than max_depth levels of the Json representation (objects and arrays,
//     so a Map value sits 3 levels below its Map) → ERR_IPC_BAD_FRAME (why 1000: framing.hpp).
//   * a message that cannot be written (unknown "$v8" kind, bad bytes, a reference to nothing,
//     too deep) → ERR_IPC_UNSERIALIZABLE, nothing is sent.
// Decoded strings are UTF-8; lone UTF-16 surrogates are kept as WTF-8 and written back as the
// same code unit, so echoing a message returns the same JS string (as in json mode).
#include <cstddef>
#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "uvcluster/error.hpp"
#include "uvcluster/ipc/framing.hpp"

namespace uvcluster::ipc {

// Splits a byte stream into payloads (without the 4-byte length prefix).
class V8FrameReader {
 public:
  explicit V8FrameReader(size_t max_frame_bytes = 64 * 1024 * 1024) : max_(max_frame_bytes) {}
  // Calls on_payload for every complete frame, in order. Returns false once a frame announced
  // more than max_frame_bytes (then and on every later call; nothing more is delivered).
  bool feed(const char* data, size_t n, const std::function<void(std::string_view)>& on_payload);
  bool buffering() const { return !buf_.empty(); }
  size_t buffered() const { return buf_.size(); }
  bool failed() const { return failed_; }

 private:
  size_t max_;
  std::string buf_;
  bool failed_ = false;
};

// Decodes one payload (header + value) into the value model above.
Result<nlohmann::json> decode_v8_payload(std::string_view payload, size_t max_depth = kMaxNestingDepth);

// Encodes a message as Node's advanced channel writes it: length prefix, header FF 0F, value.
Result<std::string> encode_v8_frame(const nlohmann::json& message, size_t max_depth = kMaxNestingDepth);

// The NODE_HANDLE wrapper {cmd, type, msg[, key]} around `message` (references in `message`
// stay relative to it).
Result<std::string> encode_v8_handle_frame(const char* type, const nlohmann::json& message,
                                           const std::string* key,
                                           size_t max_depth = kMaxNestingDepth);

// The text form of a decoded message (for printing as JSON and sending back): binary bytes
// become hex strings, NaN/±Infinity/-0 become {"$v8":"number"} objects. Everything else as is.
nlohmann::json v8_text_form(const nlohmann::json& message);

}  // namespace uvcluster::ipc
