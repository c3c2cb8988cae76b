#pragma once
// Beyond Node: policy `reuseport` binds a fresh SO_REUSEPORT socket for each worker, so the
// kernel balances between per-worker accept queues. Unmodified Node workers take it like a
// SharedHandle's socket. listen(0): the first bind picks the port, later sockets join it.
//
// Steering (reuseport_steering.hpp; root, Linux >= 4.19): the primary listens on each socket
// before handing it out, attaches the port's SK_REUSEPORT program and keeps a duplicate, so that
// the program's array can hold exactly the eligible workers' sockets. A worker is taken out while
// it is stopped (SIGCHLD, then waitid; what its socket had queued is moved to the others) or
// short of fds (checked every kFdCheckMs), and put back after; with no eligible worker left the
// kernel's own hash applies. The duplicate is closed when
// the worker leaves (remove), so its socket still leaves the group and its queue migrates. When
// any steering step fails, the handle says so once (ServerHandleContext::steering_unavailable)
// and runs as without steering: no duplicate, the worker listens itself.
#include <uv.h>

#include <functional>
#include <map>
#include <optional>

#include "uvcluster/cluster/reuseport_steering.hpp"
#include "uvcluster/cluster/server_handle.hpp"
#include "uvcluster/cluster/sockets.hpp"
#include "uvcluster/detail/uv_handle.hpp"

namespace uvcluster::cluster {

class ReusePortHandle : public SocketHandle {
 public:
  static constexpr uint64_t kFdCheckMs = 100;

  // Binds the first socket (its error is the key's, and the key is dropped); listen(0) fixes the
  // port there. No steering.
  static Result<std::unique_ptr<ReusePortHandle>> open(BindSpec spec);
  static Result<std::unique_ptr<ServerHandle>> open_for(const ServerHandleContext& ctx, const ServerQuery& q);

  Result<Fd> socket_for(int worker) override;  // a new socket in the port's SO_REUSEPORT group
  bool remove(int worker, bool gone) override;
  // With steering (the primary holds every worker's socket): new connections are refused on all of
  // them (their SYNs dropped) and the workers empty their backlogs. Without: nothing to act on.
  void stop_accepting() override;
  size_t waiting() const override;

  ReusePortHandle(BindSpec spec, Fd probe) : spec_(std::move(spec)), probe_(std::move(probe)) {}

 private:
  struct Member {
    Fd socket;  // the primary's duplicate, listening: what the program's array holds
    std::optional<int> pid;
    bool stopped = false;
    bool fd_headroom = true;
    bool eligible() const { return !stopped && fd_headroom; }
  };
  Status start_steering(const ServerHandleContext& ctx, ReusePortSteering steering, int backlog);
  void stop_steering(const Error& why);
  // listen + attach + duplicate: the member for a worker's new socket.
  Result<Member> steer(int fd, int worker);
  // Applies the members' eligibility to the program's array, then reports `changes`.
  void apply(const std::vector<SteeringChange>& changes);
  size_t eligible_count() const;
  void check_stops();
  void check_fds();

  BindSpec spec_;
  Fd probe_;  // the first bind, handed to the first worker
  // Steering; all empty without it.
  std::optional<ReusePortSteering> steering_{};
  int backlog_ = 511;
  std::map<int, Member> members_{};
  bool refusing_ = false;  // stop_accepting() attached the filter
  detail::UvHandle<uv_signal_t> sigchld_{};
  detail::UvHandle<uv_timer_t> fd_timer_{};
  std::function<std::optional<int>(int)> pid_of_{};
  std::function<void(const SteeringChange&)> changed_{};
  std::function<void(const Error&)> unavailable_{};
};

}  // namespace uvcluster::cluster
