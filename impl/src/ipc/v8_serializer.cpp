// Node's 'advanced' IPC serialization: V8 ValueSerializer format, version 15 (docs/protocol.md §1.3).
#include "uvcluster/ipc/v8_serializer.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <unordered_map>
#include <vector>

#include "core/utf8.hpp"
#include "uvcluster/ipc/serialization.hpp"

namespace uvcluster::ipc {

namespace {

using Json = nlohmann::json;

constexpr uint8_t kVersionTag = 0xFF;
constexpr uint32_t kWriteVersion = 15;  // what node v20/v22 write
constexpr uint32_t kMinReadVersion = 13;
// Decimal conversion of a BigInt is quadratic: larger ones are refused (bad frame / unserializable).
constexpr size_t kMaxBigIntBytes = 64 * 1024;
constexpr const char* kKindKey = "$v8";

// Value tags (V8's SerializationTag).
namespace tag {
constexpr uint8_t padding = 0x00, verify_object_count = '?', hole = '-', undefined = '_',
                  null = '0', true_value = 'T', false_value = 'F', int32 = 'I', uint32 = 'U',
                  double_value = 'N', bigint = 'Z', utf8_string = 'S', one_byte_string = '"',
                  two_byte_string = 'c', object_reference = '^', begin_object = 'o',
                  end_object = '{', begin_sparse_array = 'a', end_sparse_array = '@',
                  begin_dense_array = 'A', end_dense_array = '$', date = 'D', true_object = 'y',
                  false_object = 'x', number_object = 'n', bigint_object = 'z',
                  string_object = 's', regexp = 'R', begin_map = ';', end_map = ':',
                  begin_set = '\'', end_set = ',', array_buffer = 'B', host_object = '\\',
                  error = 'r';
}  // namespace tag

// Sub-tags inside an Error (V8's ErrorTag).
namespace error_tag {
constexpr uint8_t message = 'm', cause = 'c', stack = 's', end = '.';
}
struct ErrorPrototype {
  uint8_t tag = 0;
  const char* name;
};
constexpr std::array<ErrorPrototype, 6> kErrorPrototypes{{{'E', "EvalError"},
                                                          {'R', "RangeError"},
                                                          {'F', "ReferenceError"},
                                                          {'S', "SyntaxError"},
                                                          {'T', "TypeError"},
                                                          {'U', "URIError"}}};

// Node's host-object views, by the index its serializer writes (lib/v8.js).
struct ViewKind {
  const char* name;
  size_t element_size;
};
constexpr std::array<ViewKind, 13> kViews{{{"Int8Array", 1},
                                          {"Uint8Array", 1},
                                          {"Uint8ClampedArray", 1},
                                          {"Int16Array", 2},
                                          {"Uint16Array", 2},
                                          {"Int32Array", 4},
                                          {"Uint32Array", 4},
                                          {"Float32Array", 4},
                                          {"Float64Array", 8},
                                          {"DataView", 1},
                                          {"Buffer", 1},
                                          {"BigInt64Array", 8},
                                          {"BigUint64Array", 8}}};
constexpr uint32_t kArrayBufferViewHostTag = 0;  // Node's kArrayBufferViewTag
constexpr uint32_t kNotArrayBufferViewHostTag = 1;

// RegExp flags, in the order JS prints them, with V8's bits.
struct RegExpFlag {
  char letter;
  uint32_t bit = 0;
};
constexpr std::array<RegExpFlag, 8> kRegExpFlags{{{'d', 128},
                                                 {'g', 1},
                                                 {'i', 2},
                                                 {'m', 4},
                                                 {'s', 32},
                                                 {'u', 16},
                                                 {'v', 256},
                                                 {'y', 8}}};

Json kind_object(const char* kind) { return Json{{kKindKey, kind}}; }

const std::string* kind_of(const Json& v) {
  if (!v.is_object()) return nullptr;
  auto it = v.find(kKindKey);
  if (it == v.end() || !it->is_string()) return nullptr;
  return &it->get_ref<const std::string&>();
}

// RFC 6901 escaping of one reference token.
std::string pointer_token(std::string_view key) {
  std::string t;
  t.reserve(key.size());
  for (char c : key) {
    if (c == '~') t += "~0";
    else if (c == '/') t += "~1";
    else t += c;
  }
  return t;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {  // surrogates too: WTF-8
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// The code point (or lone surrogate code unit, or U+FFFD for invalid bytes) at s[i]; advances i.
uint32_t next_code_point(std::string_view s, size_t& i) {
  std::string_view rest = s.substr(i);
  if (unsigned unit = detail::wtf8_surrogate_at(rest)) {
    i += 3;
    return unit;
  }
  size_t subpart = 0;
  size_t len = detail::utf8_char_at(rest, &subpart);
  if (len == 0) {
    i += subpart;
    return 0xFFFD;
  }
  auto b = [&](size_t k) { return static_cast<uint32_t>(static_cast<unsigned char>(rest[k])); };
  i += len;
  switch (len) {
    case 1: return b(0);
    case 2: return ((b(0) & 0x1F) << 6) | (b(1) & 0x3F);
    case 3: return ((b(0) & 0x0F) << 12) | ((b(1) & 0x3F) << 6) | (b(2) & 0x3F);
    default: return ((b(0) & 0x07) << 18) | ((b(1) & 0x3F) << 12) | ((b(2) & 0x3F) << 6) | (b(3) & 0x3F);
  }
}

std::string hex_of(const std::vector<uint8_t>& bytes) {
  static const char digits[] = "0123456789abcdef";
  std::string s;
  s.reserve(bytes.size() * 2);
  for (uint8_t b : bytes) {
    s += digits[b >> 4];
    s += digits[b & 15];
  }
  return s;
}

bool bytes_of_hex(std::string_view hex, std::vector<uint8_t>& out) {
  if (hex.size() % 2) return false;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  out.resize(hex.size() / 2);
  for (size_t i = 0; i < out.size(); ++i) {
    int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

// ---- BigInt magnitudes (little-endian 64-bit limbs) <-> decimal ---------------------------

constexpr uint64_t kTen19 = 10000000000000000000ULL;

std::string decimal_of_limbs(std::vector<uint64_t> limbs, bool negative) {
  while (!limbs.empty() && limbs.back() == 0) limbs.pop_back();
  if (limbs.empty()) return "0";
  std::vector<uint64_t> chunks;  // base 10^19, least significant first
  while (!limbs.empty()) {
    unsigned __int128 rem = 0;
    for (size_t k = limbs.size(); k-- > 0;) {
      unsigned __int128 cur = (rem << 64) | limbs[k];
      limbs[k] = static_cast<uint64_t>(cur / kTen19);
      rem = cur % kTen19;
    }
    chunks.push_back(static_cast<uint64_t>(rem));
    while (!limbs.empty() && limbs.back() == 0) limbs.pop_back();
  }
  std::string s = negative ? "-" : "";
  s += std::to_string(chunks.back());
  for (size_t k = chunks.size() - 1; k-- > 0;) {
    std::string part = std::to_string(chunks[k]);
    s.append(19 - part.size(), '0');
    s += part;
  }
  return s;
}

bool limbs_of_decimal(std::string_view text, std::vector<uint64_t>& limbs, bool& negative) {
  negative = !text.empty() && text[0] == '-';
  if (negative) text.remove_prefix(1);
  if (text.empty() || text.size() > kMaxBigIntBytes * 5 / 2) return false;
  limbs.clear();
  for (size_t pos = 0; pos < text.size();) {
    size_t n = std::min<size_t>(19, text.size() - pos);
    uint64_t chunk = 0, scale = 1;
    for (size_t k = 0; k < n; ++k) {
      char c = text[pos + k];
      if (c < '0' || c > '9') return false;
      chunk = chunk * 10 + static_cast<uint64_t>(c - '0');
      scale *= 10;
    }
    pos += n;
    unsigned __int128 carry = chunk;
    for (auto& limb : limbs) {
      unsigned __int128 cur = static_cast<unsigned __int128>(limb) * scale + carry;
      limb = static_cast<uint64_t>(cur);
      carry = cur >> 64;
    }
    if (carry) limbs.push_back(static_cast<uint64_t>(carry));
  }
  while (!limbs.empty() && limbs.back() == 0) limbs.pop_back();
  if (limbs.empty()) negative = false;
  return true;
}

// JS's ToString of a number used as a property key (index keys are the usual case).
std::string number_key(double d) {
  if (d == 0) return "0";
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d > 0 ? "Infinity" : "-Infinity";
  char buf[64];
  auto r = std::to_chars(buf, buf + sizeof buf, d);
  return std::string(buf, r.ptr);
}

// ---- decoding -----------------------------------------------------------------------------

class Decoder {
 public:
  Decoder(std::string_view in, size_t max_depth) : in_(in), max_depth_(max_depth) {}

  Result<Json> run() {
    Json out;
    size_t height = 0;
    if (read_header() && read_value(out, -1, "", 1, height) && check_height(height) && resolve_references(out))
      return out;
    return Error::make("ERR_IPC_BAD_FRAME", "IPC frame is not valid V8 serialized data: " + error_ +
                                                " (" + std::to_string(in_.size()) + " bytes)");
  }

 private:
  // Where each object sits in the tree being built: paths are only spelled out for references.
  struct Node {
    int parent;         // -1: the message root
    std::string token;  // escaped JSON Pointer segment(s) below the parent
    const char* inner = "";  // below this node, children live under this prefix ("/value")
  };
  struct Reference {
    int at;      // the {"$v8":"ref"} placeholder's node
    int target;  // the node of the object it names
  };

  std::string_view in_;
  size_t pos_ = 0;
  size_t max_depth_;
  std::string error_;
  std::vector<Node> nodes_;
  std::vector<int> ids_;  // V8 object id -> node
  std::vector<Reference> references_;

  bool fail(const std::string& what) {
    if (error_.empty()) error_ = what + " at byte " + std::to_string(pos_);
    return false;
  }

  bool check_height(size_t height) {
    if (height <= max_depth_) return true;
    return fail("value nests deeper than " + std::to_string(max_depth_) + " levels");
  }

  bool read_byte(uint8_t& b) {
    if (pos_ >= in_.size()) return fail("truncated data");
    b = static_cast<uint8_t>(in_[pos_++]);
    return true;
  }

  template <typename T>
  bool read_varint(T& out) {
    out = 0;
    unsigned shift = 0;
    for (;;) {
      uint8_t b = 0;
      if (!read_byte(b)) return false;
      if (shift < sizeof(T) * 8) out |= static_cast<T>(static_cast<T>(b & 0x7F) << shift);
      shift += 7;
      if (!(b & 0x80)) return true;
      if (shift > sizeof(T) * 8 + 7) return fail("varint too long");
    }
  }

  bool read_double(double& d) {
    if (in_.size() - pos_ < 8) return fail("truncated data");
    std::memcpy(&d, in_.data() + pos_, 8);  // V8 writes host order; every Node host is little-endian
    pos_ += 8;
    return true;
  }

  bool read_raw(size_t n, std::string_view& bytes) {
    if (in_.size() - pos_ < n) return fail("truncated data");
    bytes = in_.substr(pos_, n);
    pos_ += n;
    return true;
  }

  // A tag, skipping V8's alignment padding (and the obsolete object-count check).
  bool read_tag(uint8_t& t) {
    for (;;) {
      if (!read_byte(t)) return false;
      if (t == tag::padding) continue;
      if (t == tag::verify_object_count) {
        uint32_t ignored = 0;
        if (!read_varint(ignored)) return false;
        continue;
      }
      return true;
    }
  }

  bool peek_tag(uint8_t& t) {
    size_t saved = pos_;
    bool ok = read_tag(t);
    pos_ = saved;
    return ok;
  }

  bool read_header() {
    uint8_t b = 0;
    if (!read_byte(b)) return false;
    if (b != kVersionTag) return fail("no V8 header");
    uint32_t version = 0;
    if (!read_varint(version)) return false;
    if (version < kMinReadVersion || version > kWriteVersion)
      return fail("unsupported V8 serialization version " + std::to_string(version));
    return true;
  }

  int new_node(int parent, std::string token) {
    nodes_.push_back(Node{parent, std::move(token)});
    return static_cast<int>(nodes_.size() - 1);
  }
  int new_object(int parent, std::string token) {
    int node = new_node(parent, std::move(token));
    ids_.push_back(node);
    return node;
  }

  bool read_string_body(uint8_t t, std::string& out) {
    uint32_t len = 0;
    std::string_view raw;
    if (!read_varint(len) || !read_raw(len, raw)) return false;
    out.clear();
    if (t == tag::utf8_string) {
      out = detail::utf8_valid(raw) ? std::string(raw) : detail::utf8_sanitize(raw);
    } else if (t == tag::one_byte_string) {  // Latin-1
      out.reserve(raw.size());
      for (unsigned char c : raw) append_utf8(out, c);
    } else {  // UTF-16LE; lone surrogates stay as WTF-8
      if (raw.size() % 2) return fail("odd two-byte string length");
      out.reserve(raw.size());
      auto unit = [&](size_t k) {
        return static_cast<uint32_t>(static_cast<unsigned char>(raw[2 * k])) |
               static_cast<uint32_t>(static_cast<unsigned char>(raw[2 * k + 1])) << 8;
      };
      size_t n = raw.size() / 2;
      for (size_t k = 0; k < n; ++k) {
        uint32_t u = unit(k);
        if (u >= 0xD800 && u <= 0xDBFF && k + 1 < n && unit(k + 1) >= 0xDC00 && unit(k + 1) <= 0xDFFF) {
          append_utf8(out, 0x10000 + ((u - 0xD800) << 10) + (unit(k + 1) - 0xDC00));
          ++k;
        } else {
          append_utf8(out, u);
        }
      }
    }
    return true;
  }

  static bool is_string_tag(uint8_t t) {
    return t == tag::utf8_string || t == tag::one_byte_string || t == tag::two_byte_string;
  }

  bool read_string(std::string& out) {
    uint8_t t = 0;
    if (!read_tag(t)) return false;
    if (!is_string_tag(t)) return fail("expected a string");
    return read_string_body(t, out);
  }

  bool read_bigint_body(std::string& decimal) {
    uint32_t bitfield = 0;
    if (!read_varint(bitfield)) return false;
    bool negative = bitfield & 1;
    size_t bytes = (bitfield >> 1) & ((1u << 30) - 1);
    if (bytes > kMaxBigIntBytes) return fail("BigInt over " + std::to_string(kMaxBigIntBytes) + " bytes");
    std::string_view raw;
    if (!read_raw(bytes, raw)) return false;
    std::vector<uint64_t> limbs((bytes + 7) / 8, 0);
    for (size_t k = 0; k < bytes; ++k)
      limbs[k / 8] |= static_cast<uint64_t>(static_cast<unsigned char>(raw[k])) << (8 * (k % 8));
    decimal = decimal_of_limbs(std::move(limbs), negative);
    return true;
  }

  // A property key: a string, or a number (V8 writes index keys as numbers).
  bool read_key(uint8_t t, std::string& key) {
    if (is_string_tag(t)) return read_string_body(t, key);
    if (t == tag::int32) {
      uint32_t zz = 0;
      if (!read_varint(zz)) return false;
      key = std::to_string(static_cast<int32_t>((zz >> 1) ^ (~(zz & 1) + 1)));
      return true;
    }
    if (t == tag::uint32) {
      uint32_t u = 0;
      if (!read_varint(u)) return false;
      key = std::to_string(u);
      return true;
    }
    if (t == tag::double_value) {
      double d = 0;
      if (!read_double(d)) return false;
      key = number_key(d);
      return true;
    }
    return fail("property key is not a string or number");
  }

  // Key/value pairs up to `end`, into `props` (an object); children at depth, under node.
  bool read_properties(uint8_t end, Json& props, int node, const std::string& prefix, size_t depth,
                       size_t& height, uint32_t& count) {
    props = Json::object();
    count = 0;
    for (;;) {
      uint8_t t = 0;
      if (!read_tag(t)) return false;
      if (t == end) return true;
      std::string key;
      if (!read_key(t, key)) return false;
      Json value;
      size_t h = 0;
      if (!read_value(value, node, prefix + pointer_token(key), depth, h)) return false;
      height = std::max(height, h);
      props[key] = std::move(value);
      ++count;
    }
  }

  bool expect_count(uint32_t expected) {
    uint32_t n = 0;
    if (!read_varint(n)) return false;
    if (n != expected) return fail("property count mismatch");
    return true;
  }

  // Reads one value into `out`. `depth` is the Json depth `out` has if it is an array/object
  // (the root is 1); `height` gets the Json levels the value adds (0 for a scalar).
  bool read_value(Json& out, int parent, std::string token, size_t depth, size_t& height) {
    uint8_t t = 0;
    if (!read_tag(t)) return false;
    height = 0;
    switch (t) {
      case tag::undefined: out = kind_object("undefined"); height = 1; return true;
      case tag::null: out = nullptr; return true;
      case tag::true_value: out = true; return true;
      case tag::false_value: out = false; return true;
      case tag::int32: {
        uint32_t zz = 0;
        if (!read_varint(zz)) return false;
        out = static_cast<int32_t>((zz >> 1) ^ (~(zz & 1) + 1));
        return true;
      }
      case tag::uint32: {
        uint32_t u = 0;
        if (!read_varint(u)) return false;
        out = u;
        return true;
      }
      case tag::double_value: {
        double d = 0;
        if (!read_double(d)) return false;
        out = d;
        return true;
      }
      case tag::bigint: {
        std::string decimal;
        if (!read_bigint_body(decimal)) return false;
        out = kind_object("BigInt");
        out["value"] = std::move(decimal);
        height = 1;
        return true;
      }
      case tag::utf8_string:
      case tag::one_byte_string:
      case tag::two_byte_string: {
        std::string s;
        if (!read_string_body(t, s)) return false;
        out = std::move(s);
        return true;
      }
      case tag::object_reference: {
        uint32_t id = 0;
        if (!read_varint(id)) return false;
        if (id >= ids_.size()) return fail("reference to an unknown object");
        references_.push_back(Reference{new_node(parent, std::move(token)), ids_[id]});
        out = kind_object("ref");
        out["path"] = "";  // spelled out once the whole tree is known
        height = 1;
        return true;
      }
      default: break;
    }
    if (depth > max_depth_) return check_height(depth);  // bounds the recursion below
    int node = new_object(parent, std::move(token));
    switch (t) {
      case tag::begin_object: {
        uint32_t count = 0;
        if (!read_properties(tag::end_object, out, node, "", depth + 1, height, count) ||
            !expect_count(count))
          return false;
        height += 1;
        if (out.contains(kKindKey)) {  // a plain object that has a "$v8" key: wrap it
          Json wrapped = kind_object("Object");
          wrapped["value"] = std::move(out);
          out = std::move(wrapped);
          nodes_[static_cast<size_t>(node)].inner = "/value";
          height += 1;
        }
        return true;
      }
      case tag::begin_dense_array: {
        uint32_t length = 0;
        if (!read_varint(length)) return false;
        if (length > in_.size() - pos_) return fail("array longer than the data");
        out = Json::array();
        out.get_ref<Json::array_t&>().reserve(length);
        for (uint32_t k = 0; k < length; ++k) {
          uint8_t next = 0;
          if (!peek_tag(next)) return false;
          if (next == tag::hole) {
            read_tag(next);
            out.push_back(kind_object("hole"));
            height = std::max<size_t>(height, 1);
            continue;
          }
          Json element;
          size_t h = 0;
          if (!read_value(element, node, std::to_string(k), depth + 1, h)) return false;
          height = std::max(height, h);
          out.push_back(std::move(element));
        }
        Json props;
        uint32_t count = 0;
        if (!read_properties(tag::end_dense_array, props, node, "", depth + 1, height, count) ||
            !expect_count(count) || !expect_count(length))
          return false;
        height += 1;
        if (count > 0) {  // named properties too: the sparse form keeps them
          Json sparse = kind_object("Array");
          sparse["length"] = length;
          for (uint32_t k = 0; k < length; ++k)
            if (kind_of(out[k]) == nullptr || *kind_of(out[k]) != "hole") props[std::to_string(k)] = std::move(out[k]);
          sparse["properties"] = std::move(props);
          out = std::move(sparse);
          nodes_[static_cast<size_t>(node)].inner = "/properties";
          height += 1;
        }
        return true;
      }
      case tag::begin_sparse_array: {
        uint32_t length = 0, count = 0;
        Json props;
        if (!read_varint(length) ||
            !read_properties(tag::end_sparse_array, props, node, "properties/", depth + 2, height, count) ||
            !expect_count(count) || !expect_count(length))
          return false;
        out = kind_object("Array");
        out["length"] = length;
        out["properties"] = std::move(props);
        height += 2;
        return true;
      }
      case tag::date: {
        double ms = 0;
        if (!read_double(ms)) return false;
        out = kind_object("Date");
        out["value"] = ms;
        height = 1;
        return true;
      }
      case tag::true_object:
      case tag::false_object:
        out = kind_object("Boolean");
        out["value"] = t == tag::true_object;
        height = 1;
        return true;
      case tag::number_object: {
        double d = 0;
        if (!read_double(d)) return false;
        out = kind_object("Number");
        out["value"] = d;
        height = 1;
        return true;
      }
      case tag::bigint_object: {
        std::string decimal;
        if (!read_bigint_body(decimal)) return false;
        out = kind_object("BigIntObject");
        out["value"] = std::move(decimal);
        height = 1;
        return true;
      }
      case tag::string_object: {
        std::string s;
        if (!read_string(s)) return false;
        out = kind_object("String");
        out["value"] = std::move(s);
        height = 1;
        return true;
      }
      case tag::regexp: {
        std::string source;
        uint32_t bits = 0;
        if (!read_string(source) || !read_varint(bits)) return false;
        std::string flags;
        for (const auto& f : kRegExpFlags)
          if (bits & f.bit) flags += f.letter;
        uint32_t known = 0;
        for (const auto& f : kRegExpFlags) known |= f.bit;
        if (bits & ~known) return fail("unsupported RegExp flags");
        out = kind_object("RegExp");
        out["source"] = std::move(source);
        out["flags"] = std::move(flags);
        height = 1;
        return true;
      }
      case tag::begin_map:
      case tag::begin_set: {
        bool is_map = t == tag::begin_map;
        uint8_t end = is_map ? tag::end_map : tag::end_set;
        Json items = Json::array();
        uint32_t read = 0;
        for (;;) {
          uint8_t next = 0;
          if (!peek_tag(next)) return false;
          if (next == end) {
            read_tag(next);
            break;
          }
          std::string where = (is_map ? "entries/" : "values/") + std::to_string(is_map ? read / 2 : read);
          if (is_map) where += read % 2 ? "/1" : "/0";
          Json v;
          size_t h = 0;
          if (!read_value(v, node, std::move(where), depth + (is_map ? 3 : 2), h)) return false;
          height = std::max(height, h);
          if (!is_map) items.push_back(std::move(v));
          else if (read % 2 == 0) items.push_back(Json::array({std::move(v)}));
          else items.back().push_back(std::move(v));
          ++read;
        }
        if (is_map && read % 2) return fail("Map with an odd number of items");
        if (!expect_count(read)) return false;
        out = kind_object(is_map ? "Map" : "Set");
        out[is_map ? "entries" : "values"] = std::move(items);
        height += is_map ? 3 : 2;
        return true;
      }
      case tag::array_buffer: {
        uint32_t len = 0;
        std::string_view raw;
        if (!read_varint(len) || !read_raw(len, raw)) return false;
        out = kind_object("ArrayBuffer");
        out["data"] = Json::binary(std::vector<uint8_t>(raw.begin(), raw.end()));
        height = 1;
        return true;
      }
      case tag::host_object: {
        uint32_t host_tag = 0;
        if (!read_varint(host_tag)) return false;
        if (host_tag == kNotArrayBufferViewHostTag) {
          // Node sends other host objects as a copy of their own properties; the copy is an
          // object of its own (a second id), in the same place.
          const Node& here = nodes_[static_cast<size_t>(node)];
          return read_value(out, here.parent, here.token, depth + 1, height);
        }
        if (host_tag != kArrayBufferViewHostTag) return fail("unknown host object");
        uint32_t index = 0, len = 0;
        std::string_view raw;
        if (!read_varint(index) || !read_varint(len)) return false;
        if (index >= kViews.size()) return fail("unknown ArrayBufferView type " + std::to_string(index));
        if (len % kViews[index].element_size) return fail("typed array length not a multiple of its element");
        if (!read_raw(len, raw)) return false;
        out = kind_object(kViews[index].name);
        out["data"] = Json::binary(std::vector<uint8_t>(raw.begin(), raw.end()));
        height = 1;
        return true;
      }
      case tag::error: {
        out = kind_object("Error");
        out["name"] = "Error";
        for (;;) {
          uint8_t sub = 0;
          if (!read_varint(sub)) return false;
          if (sub == error_tag::end) break;
          if (sub == error_tag::message || sub == error_tag::stack) {
            std::string s;
            if (!read_string(s)) return false;
            out[sub == error_tag::message ? "message" : "stack"] = std::move(s);
            continue;
          }
          if (sub == error_tag::cause) {
            Json cause;
            size_t h = 0;
            if (!read_value(cause, node, "cause", depth + 1, h)) return false;
            height = std::max(height, h);
            out["cause"] = std::move(cause);
            continue;
          }
          auto proto = std::find_if(kErrorPrototypes.begin(), kErrorPrototypes.end(),
                                    [sub](const ErrorPrototype& p) { return p.tag == sub; });
          if (proto == kErrorPrototypes.end()) return fail("unknown Error field");
          out["name"] = proto->name;
        }
        height += 1;
        return true;
      }
      default: {
        --pos_;
        std::string shown = t >= 0x20 && t < 0x7F ? std::string("'") + static_cast<char>(t) + "'"
                                                 : "0x" + hex_of({t});
        return fail("unsupported V8 value tag " + shown);
      }
    }
  }

  // ---- references, once the tree is complete --------------------------------------------

  std::string path_of(int node, size_t& budget) {
    std::vector<int> chain;
    for (int n = node; n >= 0; n = nodes_[static_cast<size_t>(n)].parent) chain.push_back(n);
    std::string path;
    for (size_t k = chain.size() - 1; k-- > 0;) {  // chain.back() is the root: no token
      const Node& parent = nodes_[static_cast<size_t>(chain[k + 1])];
      const Node& here = nodes_[static_cast<size_t>(chain[k])];
      path += parent.inner;
      path += '/';
      path += here.token;
    }
    budget = path.size() > budget ? 0 : budget - path.size();
    return path;
  }

  bool resolve_references(Json& root) {
    if (references_.empty()) return true;
    // A NODE_HANDLE wrapper (possibly wrapped again by a retransmission): paths are relative to
    // the user message inside, which is what the channel delivers.
    std::string base;
    for (const Json* at = &root;;) {
      if (!at->is_object()) break;
      auto cmd = at->find("cmd");
      auto msg = at->find("msg");
      if (cmd == at->end() || msg == at->end() || *cmd != "NODE_HANDLE") break;
      base += "/msg";
      at = &*msg;
    }
    size_t budget = 16 * in_.size() + (1u << 20);  // bounds the work deep references can cause
    for (const auto& r : references_) {
      std::string target = path_of(r.target, budget);
      std::string at = path_of(r.at, budget);
      if (budget == 0) return fail("too many deep references");
      if (target.compare(0, base.size(), base) != 0) return fail("reference outside the message");
      try {
        root.at(Json::json_pointer(at))["path"] = target.substr(base.size());
      } catch (...) {
        return fail("reference to a replaced property");  // a duplicate key overwrote its place
      }
    }
    return true;
  }
};

// ---- encoding -----------------------------------------------------------------------------

class Encoder {
 public:
  Encoder(std::string& out, size_t max_depth) : out_(out), max_depth_(max_depth) {}

  bool write(const Json& message, size_t depth) {
    root_ = &message;
    return value(message, depth);
  }
  void header() {
    out_ += static_cast<char>(kVersionTag);
    varint(kWriteVersion);
  }
  void raw_tag(uint8_t t) { out_ += static_cast<char>(t); }
  void begin_wrapper_object() {  // an object that is not in the message still takes an id
    raw_tag(tag::begin_object);
    ++next_id_;
  }
  void string(std::string_view s) { write_string(s); }
  const std::string& error() const { return error_; }

 private:
  std::string& out_;
  size_t max_depth_;
  const Json* root_ = nullptr;
  std::unordered_map<const Json*, uint32_t> ids_;
  uint32_t next_id_ = 0;
  std::string error_;

  bool fail(std::string what) {
    if (error_.empty()) error_ = std::move(what);
    return false;
  }

  void varint(uint64_t v) {
    do {
      uint8_t b = v & 0x7F;
      v >>= 7;
      if (v) b |= 0x80;
      out_ += static_cast<char>(b);
    } while (v);
  }
  void double_bits(double d) {
    char b[8];
    std::memcpy(b, &d, 8);
    out_.append(b, 8);
  }
  // Json integers travel as V8 int32/uint32 when they fit, doubles as doubles (as V8 writes a
  // HeapNumber), so a decoded message encodes back to the same Json number types.
  void number(double d) {
    raw_tag(tag::double_value);
    double_bits(d);
  }
  void integer(int64_t i) {
    if (i >= std::numeric_limits<int32_t>::min() && i <= std::numeric_limits<int32_t>::max()) {
      raw_tag(tag::int32);
      varint((static_cast<uint32_t>(i) << 1) ^ static_cast<uint32_t>(static_cast<int32_t>(i) >> 31));
    } else if (i > 0 && i <= std::numeric_limits<uint32_t>::max()) {
      raw_tag(tag::uint32);
      varint(static_cast<uint64_t>(i));
    } else {
      number(static_cast<double>(i));
    }
  }

  void write_string(std::string_view s) {
    std::vector<uint32_t> cps;
    bool one_byte = true;
    for (size_t i = 0; i < s.size();) {
      uint32_t cp = next_code_point(s, i);
      one_byte = one_byte && cp <= 0xFF;
      cps.push_back(cp);
    }
    if (one_byte) {
      raw_tag(tag::one_byte_string);
      varint(cps.size());
      for (uint32_t cp : cps) out_ += static_cast<char>(cp);
      return;
    }
    std::string units;
    auto unit = [&](uint32_t u) {
      units += static_cast<char>(u & 0xFF);
      units += static_cast<char>(u >> 8);
    };
    for (uint32_t cp : cps) {
      if (cp >= 0x10000) {
        unit(0xD800 + ((cp - 0x10000) >> 10));
        unit(0xDC00 + ((cp - 0x10000) & 0x3FF));
      } else {
        unit(cp);
      }
    }
    // V8 pads so that the UTF-16 data starts at an even offset of the buffer (Node's buffer
    // includes the 4-byte length prefix, which keeps the parity).
    size_t varint_len = 1;
    for (uint64_t v = units.size(); v >= 0x80; v >>= 7) ++varint_len;
    if ((out_.size() + 1 + varint_len) & 1) raw_tag(tag::padding);
    raw_tag(tag::two_byte_string);
    varint(units.size());
    out_ += units;
  }

  bool bigint_body(const Json& v, const std::string& kind) {
    std::vector<uint64_t> limbs;
    bool negative = false;
    if (!v.is_string() || !limbs_of_decimal(v.get_ref<const std::string&>(), limbs, negative))
      return fail(kind + " value must be a decimal string (up to " + std::to_string(kMaxBigIntBytes) +
                  " bytes of magnitude)");
    varint((static_cast<uint64_t>(limbs.size() * 8) << 1) | (negative ? 1 : 0));
    for (uint64_t limb : limbs)
      for (int k = 0; k < 8; ++k) out_ += static_cast<char>((limb >> (8 * k)) & 0xFF);
    return true;
  }

  bool bytes_of(const Json& v, const std::string& kind, std::vector<uint8_t>& scratch,
                const std::vector<uint8_t>*& bytes) {
    auto data = v.find("data");
    if (data != v.end() && data->is_binary()) {
      bytes = &data->get_binary();
      return true;
    }
    if (data != v.end() && data->is_string() && bytes_of_hex(data->get_ref<const std::string&>(), scratch)) {
      bytes = &scratch;
      return true;
    }
    return fail(kind + " needs \"data\": binary or a hex string");
  }

  // The "value" of a {"$v8":"number"} object: a JSON number, or the text of one JSON cannot
  // hold ("NaN", "Infinity", "-Infinity", "-0").
  static std::optional<double> number_text_value(const Json& v) {
    auto it = v.find("value");
    if (it == v.end()) return std::nullopt;
    if (it->is_number()) return it->get<double>();
    if (!it->is_string()) return std::nullopt;
    const std::string& text = it->get_ref<const std::string&>();
    if (text == "NaN") return std::numeric_limits<double>::quiet_NaN();
    if (text == "Infinity") return std::numeric_limits<double>::infinity();
    if (text == "-Infinity") return -std::numeric_limits<double>::infinity();
    if (text == "-0") return -0.0;
    return std::nullopt;
  }

  // A number as v8_text_form leaves it: a JSON number, or {"$v8":"number"} (what a Date or a
  // Number object holding NaN/±Infinity/-0 carries after the text form).
  static std::optional<double> number_or_text(const Json* v) {
    if (!v) return std::nullopt;
    if (v->is_number()) return v->get<double>();
    if (v->is_object()) {
      auto kind = v->find("$v8");
      if (kind != v->end() && kind->is_string() && *kind == "number") return number_text_value(*v);
    }
    return std::nullopt;
  }

  bool number_text(const Json& v) {
    auto d = number_text_value(v);
    if (!d) return fail("number value must be a number, NaN, Infinity, -Infinity or -0");
    if (v.find("value")->is_number()) {
      number(*d);
      return true;
    }
    raw_tag(tag::double_value);
    double_bits(*d);
    return true;
  }

  // An object (receiver) seen before is written as a back-reference.
  bool seen(const Json& v) {
    auto it = ids_.find(&v);
    if (it == ids_.end()) {
      ids_.emplace(&v, next_id_++);
      return false;
    }
    raw_tag(tag::object_reference);
    varint(it->second);
    return true;
  }

  bool properties(const Json& object, size_t depth) {
    for (const auto& [key, v] : object.items()) {
      write_string(key);
      if (!value(v, depth)) return false;
    }
    return true;
  }

  bool reference(const Json& v, size_t depth) {
    auto path = v.find("path");
    if (path == v.end() || !path->is_string()) return fail("ref needs a \"path\" string");
    const Json* target = nullptr;
    try {
      target = &root_->at(Json::json_pointer(path->get<std::string>()));
    } catch (...) {
      return fail("ref path " + path->get<std::string>() + " names nothing in the message");
    }
    const std::string* kind = kind_of(*target);
    bool object = target->is_array() || target->is_binary() ||
                  (target->is_object() && (!kind || (*kind != "ref" && *kind != "undefined" &&
                                                     *kind != "hole" && *kind != "number" &&
                                                     *kind != "BigInt")));
    if (!object) return fail("ref path " + path->get<std::string>() + " does not name an object");
    return value(*target, depth);  // written here if this is its first occurrence
  }

  bool value(const Json& v, size_t depth) {
    if (v.is_structured() && depth > max_depth_)
      return fail("message nests deeper than " + std::to_string(max_depth_) + " levels");
    switch (v.type()) {
      case Json::value_t::null: raw_tag(tag::null); return true;
      case Json::value_t::boolean: raw_tag(v.get<bool>() ? tag::true_value : tag::false_value); return true;
      case Json::value_t::number_integer: integer(v.get<int64_t>()); return true;
      case Json::value_t::number_unsigned:
        if (v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
          number(static_cast<double>(v.get<uint64_t>()));
        else
          integer(static_cast<int64_t>(v.get<uint64_t>()));
        return true;
      case Json::value_t::number_float: number(v.get<double>()); return true;
      case Json::value_t::string: write_string(v.get_ref<const std::string&>()); return true;
      case Json::value_t::binary: {  // a bare binary travels as a Buffer
        if (seen(v)) return true;
        raw_tag(tag::host_object);
        varint(kArrayBufferViewHostTag);
        varint(10);
        varint(v.get_binary().size());
        out_.append(reinterpret_cast<const char*>(v.get_binary().data()), v.get_binary().size());
        return true;
      }
      case Json::value_t::array: {
        if (seen(v)) return true;
        raw_tag(tag::begin_dense_array);
        varint(v.size());
        for (const auto& e : v) {
          const std::string* kind = kind_of(e);
          if (kind && *kind == "hole") raw_tag(tag::hole);
          else if (!value(e, depth + 1)) return false;
        }
        raw_tag(tag::end_dense_array);
        varint(0);
        varint(v.size());
        return true;
      }
      case Json::value_t::object: break;
      default: return fail("value of an unknown type");
    }
    const std::string* kind = kind_of(v);
    if (!kind) {
      if (seen(v)) return true;
      raw_tag(tag::begin_object);
      if (!properties(v, depth + 1)) return false;
      raw_tag(tag::end_object);
      varint(v.size());
      return true;
    }
    return special(v, *kind, depth);
  }

  bool special(const Json& v, const std::string& kind, size_t depth) {
    auto member = [&](const char* name) -> const Json* {
      auto it = v.find(name);
      return it == v.end() ? nullptr : &*it;
    };
    if (kind == "undefined") return raw_tag(tag::undefined), true;
    if (kind == "hole") return fail("a hole outside an array");
    if (kind == "number") return number_text(v);
    if (kind == "ref") return reference(v, depth);
    if (kind == "BigInt") {
      raw_tag(tag::bigint);
      const Json* value = member("value");
      return bigint_body(value ? *value : Json(), kind);
    }
    if (seen(v)) return true;  // everything below is an object
    if (kind == "Object") {
      const Json* inner = member("value");
      if (!inner || !inner->is_object()) return fail("Object needs an object \"value\"");
      raw_tag(tag::begin_object);
      if (!properties(*inner, depth + 2)) return false;
      raw_tag(tag::end_object);
      varint(inner->size());
      return true;
    }
    if (kind == "Array") {
      const Json* length = member("length");
      const Json* props = member("properties");
      if (!length || !length->is_number_unsigned() || length->get<uint64_t>() > 0xFFFFFFFFu ||
          (props && !props->is_object()))
        return fail("Array needs a \"length\" (uint32) and an object \"properties\"");
      raw_tag(tag::begin_sparse_array);
      varint(length->get<uint64_t>());
      if (props && !properties(*props, depth + 2)) return false;
      raw_tag(tag::end_sparse_array);
      varint(props ? props->size() : 0);
      varint(length->get<uint64_t>());
      return true;
    }
    if (kind == "Date") {
      auto value = number_or_text(member("value"));
      if (!value) return fail("Date needs a number \"value\"");
      raw_tag(tag::date);
      double_bits(*value);
      return true;
    }
    if (kind == "RegExp") {
      const Json* source = member("source");
      const Json* flags = member("flags");
      if (!source || !source->is_string() || (flags && !flags->is_string()))
        return fail("RegExp needs a \"source\" string and a \"flags\" string");
      uint32_t bits = 0;
      for (char c : flags ? flags->get<std::string>() : std::string()) {
        auto f = std::find_if(kRegExpFlags.begin(), kRegExpFlags.end(),
                              [c](const RegExpFlag& x) { return x.letter == c; });
        if (f == kRegExpFlags.end() || (bits & f->bit)) return fail(std::string("bad RegExp flag '") + c + "'");
        bits |= f->bit;
      }
      raw_tag(tag::regexp);
      write_string(source->get_ref<const std::string&>());
      varint(bits);
      return true;
    }
    if (kind == "Map" || kind == "Set") {
      bool is_map = kind == "Map";
      const Json* items = member(is_map ? "entries" : "values");
      if (!items || !items->is_array()) return fail(kind + " needs an array of " + (is_map ? "entries" : "values"));
      raw_tag(is_map ? tag::begin_map : tag::begin_set);
      for (const auto& item : *items) {
        if (is_map) {
          if (!item.is_array() || item.size() != 2) return fail("a Map entry must be [key, value]");
          if (!value(item[0], depth + 3) || !value(item[1], depth + 3)) return false;
        } else if (!value(item, depth + 2)) {
          return false;
        }
      }
      raw_tag(is_map ? tag::end_map : tag::end_set);
      varint(items->size() * (is_map ? 2 : 1));
      return true;
    }
    if (kind == "Boolean") {
      const Json* value = member("value");
      if (!value || !value->is_boolean()) return fail("Boolean needs a boolean \"value\"");
      raw_tag(value->get<bool>() ? tag::true_object : tag::false_object);
      return true;
    }
    if (kind == "Number") {
      auto value = number_or_text(member("value"));
      if (!value) return fail("Number needs a number \"value\"");
      raw_tag(tag::number_object);
      double_bits(*value);
      return true;
    }
    if (kind == "String") {
      const Json* value = member("value");
      if (!value || !value->is_string()) return fail("String needs a string \"value\"");
      raw_tag(tag::string_object);
      write_string(value->get_ref<const std::string&>());
      return true;
    }
    if (kind == "BigIntObject") {
      raw_tag(tag::bigint_object);
      const Json* value = member("value");
      return bigint_body(value ? *value : Json(), kind);
    }
    if (kind == "Error") return error(v, depth);
    std::vector<uint8_t> scratch;
    const std::vector<uint8_t>* bytes = nullptr;
    if (kind == "ArrayBuffer") {
      if (!bytes_of(v, kind, scratch, bytes)) return false;
      raw_tag(tag::array_buffer);
      varint(bytes->size());
      out_.append(reinterpret_cast<const char*>(bytes->data()), bytes->size());
      return true;
    }
    auto view = std::find_if(kViews.begin(), kViews.end(), [&](const ViewKind& k) { return kind == k.name; });
    if (view == kViews.end()) return fail("unknown $v8 kind \"" + kind + "\"");
    if (!bytes_of(v, kind, scratch, bytes)) return false;
    if (bytes->size() % view->element_size)
      return fail(kind + " data must be a multiple of " + std::to_string(view->element_size) + " bytes");
    raw_tag(tag::host_object);
    varint(kArrayBufferViewHostTag);
    varint(static_cast<uint64_t>(view - kViews.begin()));
    varint(bytes->size());
    out_.append(reinterpret_cast<const char*>(bytes->data()), bytes->size());
    return true;
  }

  bool error(const Json& v, size_t depth) {
    auto text = [&](const char* name) -> const Json* {
      auto it = v.find(name);
      return it != v.end() && it->is_string() ? &*it : nullptr;
    };
    raw_tag(tag::error);
    if (const Json* name = text("name"); name && *name != "Error") {
      auto proto = std::find_if(kErrorPrototypes.begin(), kErrorPrototypes.end(),
                                [&](const ErrorPrototype& p) { return *name == p.name; });
      if (proto == kErrorPrototypes.end()) return fail("Error name must be one of JS's Error kinds");
      varint(proto->tag);
    }
    if (const Json* message = text("message")) {
      varint(error_tag::message);
      write_string(message->get_ref<const std::string&>());
    }
    if (const Json* stack = text("stack")) {
      varint(error_tag::stack);
      write_string(stack->get_ref<const std::string&>());
    }
    if (auto cause = v.find("cause"); cause != v.end()) {
      varint(error_tag::cause);
      if (!value(*cause, depth + 1)) return false;
    }
    varint(error_tag::end);
    return true;
  }
};

Error unserializable(const std::string& why) {
  return Error::make("ERR_IPC_UNSERIALIZABLE", "cannot serialize the message: " + why);
}

void put_length_prefix(std::string& frame) {
  auto len = static_cast<uint32_t>(frame.size() - 4);
  for (int k = 0; k < 4; ++k) frame[static_cast<size_t>(k)] = static_cast<char>((len >> (24 - 8 * k)) & 0xFF);
}

uint32_t be32(const char* p) {
  auto b = [&](int k) { return static_cast<uint32_t>(static_cast<unsigned char>(p[k])); };
  return b(0) << 24 | b(1) << 16 | b(2) << 8 | b(3);
}

}  // namespace

bool V8FrameReader::feed(const char* data, size_t n, const std::function<void(std::string_view)>& on_payload) {
  if (failed_) return false;
  std::string_view in(data, n);
  while (!in.empty()) {
    if (buf_.empty()) {  // fast path: whole frames straight from the read buffer
      if (in.size() >= 4) {
        uint32_t len = be32(in.data());
        if (len > max_) return failed_ = true, false;
        if (in.size() - 4 >= len) {
          on_payload(in.substr(4, len));
          if (failed_) return false;
          in.remove_prefix(4 + static_cast<size_t>(len));
          continue;
        }
      }
      buf_.assign(in);
      break;
    }
    if (buf_.size() < 4) {
      size_t take = std::min(4 - buf_.size(), in.size());
      buf_.append(in.substr(0, take));
      in.remove_prefix(take);
      if (buf_.size() < 4) break;
    }
    uint32_t len = be32(buf_.data());
    if (len > max_) {
      buf_.clear();
      return failed_ = true, false;
    }
    size_t take = std::min(4 + static_cast<size_t>(len) - buf_.size(), in.size());
    buf_.append(in.substr(0, take));
    in.remove_prefix(take);
    if (buf_.size() == 4 + static_cast<size_t>(len)) {
      std::string frame = std::move(buf_);
      buf_.clear();
      on_payload(std::string_view(frame).substr(4));
      if (failed_) return false;
    }
  }
  return true;
}

Result<nlohmann::json> decode_v8_payload(std::string_view payload, size_t max_depth) {
  return Decoder(payload, max_depth).run();
}

Result<std::string> encode_v8_frame(const nlohmann::json& message, size_t max_depth) {
  std::string frame(4, '\0');
  Encoder enc(frame, max_depth);
  enc.header();
  if (!enc.write(message, 1)) return unserializable(enc.error());
  put_length_prefix(frame);
  return frame;
}

Result<std::string> encode_v8_handle_frame(const char* type, const nlohmann::json& message,
                                           const std::string* key, size_t max_depth) {
  std::string frame(4, '\0');
  Encoder enc(frame, max_depth);
  enc.header();
  // Node's wrapper {cmd, type, msg[, key]} is object #0; the message's references stay
  // relative to the message itself.
  enc.begin_wrapper_object();
  enc.string("cmd");
  enc.string("NODE_HANDLE");
  enc.string("type");
  enc.string(type);
  enc.string("msg");
  if (!enc.write(message, 2)) return unserializable(enc.error());
  if (key) {
    enc.string("key");
    enc.string(*key);
  }
  enc.raw_tag(tag::end_object);
  frame += static_cast<char>(key ? 4 : 3);
  put_length_prefix(frame);
  return frame;
}

nlohmann::json v8_text_form(const nlohmann::json& message) {
  switch (message.type()) {
    case Json::value_t::binary: return hex_of(message.get_binary());
    case Json::value_t::number_float: {
      double d = message.get<double>();
      const char* text = std::isnan(d) ? "NaN"
                         : std::isinf(d) ? (d > 0 ? "Infinity" : "-Infinity")
                         : (d == 0 && std::signbit(d)) ? "-0"
                                                        : nullptr;
      if (!text) return message;
      Json n = kind_object("number");
      n["value"] = text;
      return n;
    }
    case Json::value_t::array: {
      Json out = Json::array();
      for (const auto& e : message) out.push_back(v8_text_form(e));
      return out;
    }
    case Json::value_t::object: {
      Json out = Json::object();
      for (const auto& [k, e] : message.items()) out[k] = v8_text_form(e);
      return out;
    }
    default: return message;
  }
}

const char* serialization_name(Serialization s) { return s == Serialization::advanced ? "advanced" : "json"; }

std::optional<Serialization> parse_serialization(std::string_view name) {
  if (name == "json") return Serialization::json;
  if (name == "advanced") return Serialization::advanced;
  return std::nullopt;
}

}  // namespace uvcluster::ipc
