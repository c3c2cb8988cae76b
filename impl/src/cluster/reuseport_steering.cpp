// The SK_REUSEPORT program of policy `reuseport`, assembled by hand (see reuseport_steering.hpp
// for what it does and why). The instruction encoding is the kernel's (include/uapi/linux/bpf.h,
// Documentation/bpf/standardization/instruction-set.rst); the helpers below stand in for the
// kernel-internal BPF_* macros of include/linux/filter.h, which <linux/bpf.h> does not export.
#include "uvcluster/cluster/reuseport_steering.hpp"

#include "uvcluster/cluster/sockets.hpp"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include <cstddef>
#include <cstring>
#include <string>

namespace uvcluster::cluster {

namespace {

constexpr bpf_insn insn(uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm) {
  bpf_insn i{};
  i.code = code;
  i.dst_reg = dst & 0xf;
  i.src_reg = src & 0xf;
  i.off = off;
  i.imm = imm;
  return i;
}
constexpr bpf_insn mov_reg(uint8_t dst, uint8_t src) { return insn(BPF_ALU64 | BPF_MOV | BPF_X, dst, src, 0, 0); }
constexpr bpf_insn mov_imm(uint8_t dst, int32_t imm) { return insn(BPF_ALU64 | BPF_MOV | BPF_K, dst, 0, 0, imm); }
constexpr bpf_insn add_imm(uint8_t dst, int32_t imm) { return insn(BPF_ALU64 | BPF_ADD | BPF_K, dst, 0, 0, imm); }
constexpr bpf_insn mod32_reg(uint8_t dst, uint8_t src) { return insn(BPF_ALU | BPF_MOD | BPF_X, dst, src, 0, 0); }
constexpr bpf_insn store32_imm(uint8_t base, int16_t off, int32_t imm) { return insn(BPF_ST | BPF_MEM | BPF_W, base, 0, off, imm); }
constexpr bpf_insn store32(uint8_t base, int16_t off, uint8_t src) { return insn(BPF_STX | BPF_MEM | BPF_W, base, src, off, 0); }
constexpr bpf_insn load32(uint8_t dst, uint8_t base, int16_t off) { return insn(BPF_LDX | BPF_MEM | BPF_W, dst, base, off, 0); }
constexpr bpf_insn jump_if_zero(uint8_t reg, int16_t skip) { return insn(BPF_JMP | BPF_JEQ | BPF_K, reg, 0, skip, 0); }
constexpr bpf_insn call(int32_t helper) { return insn(BPF_JMP | BPF_CALL, 0, 0, 0, helper); }
constexpr bpf_insn exit_insn() { return insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0); }
// A map's fd as a 64-bit immediate: two slots, the loader swaps in the map.
void load_map(std::vector<bpf_insn>& out, uint8_t dst, int map_fd) {
  out.push_back(insn(BPF_LD | BPF_DW | BPF_IMM, dst, BPF_PSEUDO_MAP_FD, 0, map_fd));
  out.push_back(insn(0, 0, 0, 0, 0));
}

std::vector<bpf_insn> steering_program(int count_map, int socket_map) {
  constexpr uint8_t r0 = BPF_REG_0, r1 = BPF_REG_1, r2 = BPF_REG_2, r3 = BPF_REG_3, r4 = BPF_REG_4,
                    r6 = BPF_REG_6, fp = BPF_REG_10;
  std::vector<bpf_insn> p;
  p.push_back(mov_reg(r6, r1));          // r6 = reuse_md
  p.push_back(store32_imm(fp, -4, 0));   // key 0 of the count map, on the stack
  p.push_back(mov_reg(r2, fp));
  p.push_back(add_imm(r2, -4));
  load_map(p, r1, count_map);
  p.push_back(call(BPF_FUNC_map_lookup_elem));
  size_t no_entry = p.size();
  p.push_back({});                       // if (!r0) goto pass
  p.push_back(load32(r3, r0, 0));        // r3 = n
  size_t no_socket = p.size();
  p.push_back({});                       // if (!n) goto pass
  p.push_back(load32(r4, r6, static_cast<int16_t>(offsetof(sk_reuseport_md, hash))));
  p.push_back(mod32_reg(r4, r3));        // slot = hash % n
  p.push_back(store32(fp, -8, r4));
  p.push_back(mov_reg(r1, r6));
  load_map(p, r2, socket_map);
  p.push_back(mov_reg(r3, fp));
  p.push_back(add_imm(r3, -8));
  p.push_back(mov_imm(r4, 0));
  // Its error (an empty slot: the socket closed) leaves no choice made: the kernel's hash.
  p.push_back(call(BPF_FUNC_sk_select_reuseport));
  size_t pass = p.size();
  p.push_back(mov_imm(r0, SK_PASS));
  p.push_back(exit_insn());
  auto jump_to_pass = [&](size_t at, uint8_t reg) { p[at] = jump_if_zero(reg, static_cast<int16_t>(pass - at - 1)); };
  jump_to_pass(no_entry, r0);
  jump_to_pass(no_socket, r3);
  return p;
}

uint64_t as_u64(const void* p) { return reinterpret_cast<uintptr_t>(p); }

// One bpf(2) call; the fd or 0 it returns, or the error named after `what`.
Result<int> bpf(int cmd, bpf_attr& attr, const char* what) {
  long rc = ::syscall(__NR_bpf, cmd, &attr, sizeof attr);
  if (rc < 0) return Error::from_uv(-errno, what);
  return static_cast<int>(rc);
}

Result<Fd> create_map(bpf_map_type type, uint32_t value_size, uint32_t entries, const char* name) {
  bpf_attr attr{};
  attr.map_type = type;
  attr.key_size = sizeof(uint32_t);
  attr.value_size = value_size;
  attr.max_entries = entries;
  std::strncpy(attr.map_name, name, sizeof attr.map_name - 1);
  auto fd = bpf(BPF_MAP_CREATE, attr, "bpf(BPF_MAP_CREATE)");
  if (!fd.ok()) return fd.error();
  return Fd(*fd);
}

Status update(int map, uint32_t key, const void* value, const char* what) {
  bpf_attr attr{};
  attr.map_fd = static_cast<uint32_t>(map);
  attr.key = as_u64(&key);
  attr.value = as_u64(value);
  attr.flags = BPF_ANY;
  if (auto r = bpf(BPF_MAP_UPDATE_ELEM, attr, what); !r.ok()) return r.error();
  return Ok{};
}

}  // namespace

Result<ReusePortSteering> ReusePortSteering::create() {
  auto count = create_map(BPF_MAP_TYPE_ARRAY, sizeof(uint32_t), 1, "uvc_rp_count");
  if (!count.ok()) return count.error();
  auto sockets = create_map(BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, sizeof(uint64_t), kCapacity, "uvc_rp_socks");
  if (!sockets.ok()) return sockets.error();
  auto code = steering_program(count->get(), sockets->get());
  // SELECT_OR_MIGRATE (Linux >= 5.14) first; EINVAL from an older kernel: selection only.
  Result<int> program = Error::from_uv(UV_EINVAL, "bpf(BPF_PROG_LOAD)");
  bool migrates = false;
  for (bpf_attach_type type : {BPF_SK_REUSEPORT_SELECT_OR_MIGRATE, BPF_SK_REUSEPORT_SELECT}) {
    migrates = type == BPF_SK_REUSEPORT_SELECT_OR_MIGRATE;
    static const char license[] = "GPL";
    bpf_attr attr{};
    attr.prog_type = BPF_PROG_TYPE_SK_REUSEPORT;
    attr.expected_attach_type = type;
    attr.insns = as_u64(code.data());
    attr.insn_cnt = static_cast<uint32_t>(code.size());
    attr.license = as_u64(license);
    std::strncpy(attr.prog_name, "uvc_rp_steer", sizeof attr.prog_name - 1);
    program = bpf(BPF_PROG_LOAD, attr, "bpf(BPF_PROG_LOAD)");
    if (program.ok() || program.error().errnum != UV_EINVAL) break;
  }
  if (!program.ok()) return program.error();
  ReusePortSteering s(std::move(*count), std::move(*sockets), Fd(*program), migrates);
  if (auto st = s.set_count(0); !st.ok()) return st.error();
  return s;
}

Status ReusePortSteering::attach(int listen_fd) const {
  int prog = program_.get();
  if (::setsockopt(listen_fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_EBPF, &prog, sizeof prog) != 0)
    return Error::from_uv(-errno, "setsockopt(SO_ATTACH_REUSEPORT_EBPF)");
  return Ok{};
}

Status ReusePortSteering::set_count(uint32_t n) {
  return update(count_map_.get(), 0, &n, "bpf(BPF_MAP_UPDATE_ELEM)");
}

Status ReusePortSteering::steer_to(const std::vector<int>& listening_fds) {
  if (auto st = set_count(0); !st.ok()) return st;
  for (uint32_t slot = 0; slot < filled_; ++slot) {
    bpf_attr attr{};
    attr.map_fd = static_cast<uint32_t>(socket_map_.get());
    attr.key = as_u64(&slot);
    // ENOENT: the socket closed and the kernel emptied its slot already.
    if (auto r = bpf(BPF_MAP_DELETE_ELEM, attr, "bpf(BPF_MAP_DELETE_ELEM)"); !r.ok() && r.error().errnum != UV_ENOENT)
      return r.error();
  }
  filled_ = 0;
  if (listening_fds.empty() || listening_fds.size() > kCapacity) return Ok{};
  for (int fd : listening_fds) {
    uint64_t value = static_cast<uint64_t>(fd);
    if (auto st = update(socket_map_.get(), filled_, &value, "bpf(BPF_MAP_UPDATE_ELEM)"); !st.ok()) return st;
    ++filled_;
  }
  return set_count(filled_);
}

Status ReusePortSteering::move_queue(int listening_fd, int backlog) const {
  if (!migrates_) return Error::from_uv(UV_ENOTSUP, "shutdown");  // it would reset the queue
  if (::shutdown(listening_fd, SHUT_RD) != 0) return Error::from_uv(-errno, "shutdown");
  return listen_fd(listening_fd, backlog);
}

bool has_fd_headroom(bool eligible_now, const FdUse& use) {
  uint64_t free = use.soft_limit > use.open ? use.soft_limit - use.open : 0;
  return free >= (eligible_now ? kFdsOutBelow : kFdsBackAt);
}

Result<FdUse> fd_use(int pid) {
  FdUse use;
  rlimit limit{};
  if (::prlimit(pid, RLIMIT_NOFILE, nullptr, &limit) != 0) return Error::from_uv(-errno, "prlimit");
  use.soft_limit = limit.rlim_cur;
  std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  Fd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!d) return Error::from_uv(-errno, "open", dir);
  // getdents64 into the stack, not opendir(): its 32 KiB heap buffer, taken and freed every
  // check, left heap pages resident in the primary (fault lab, sighup-reload: +56-68 KB of RSS
  // after the reload with it, +28 KB without; main +32 KB).
  alignas(dirent64) char buf[4096];
  for (;;) {
    ssize_t n = ::getdents64(d.get(), buf, sizeof buf);
    if (n < 0) return Error::from_uv(-errno, "getdents64", dir);
    if (n == 0) return use;
    for (ssize_t at = 0; at < n;) {
      const auto* e = reinterpret_cast<const dirent64*>(buf + at);
      if (e->d_name[0] != '.') ++use.open;
      at += e->d_reclen;
    }
  }
}

std::optional<bool> child_stopped(int pid) {
  siginfo_t info{};
  // No WEXITED: libuv reaps exits (waitpid(pid, WNOHANG)); WNOWAIT: every handle of the
  // primary may ask, and a stop stays reported while it lasts.
  if (::waitid(P_PID, static_cast<id_t>(pid), &info, WSTOPPED | WCONTINUED | WNOHANG | WNOWAIT) != 0) return std::nullopt;
  if (info.si_pid == 0) return std::nullopt;
  if (info.si_code == CLD_STOPPED || info.si_code == CLD_TRAPPED) return true;
  if (info.si_code == CLD_CONTINUED) return false;
  return std::nullopt;
}

}  // namespace uvcluster::cluster
