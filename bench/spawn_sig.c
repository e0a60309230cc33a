/* The cost of glibc resetting every signal in the posix_spawn child, from a
 * process with seven signal handlers. gcc -O2 -o spawn_sig spawn_sig.c, then
 * ./spawn_sig 2000 MODE (BENCHMARKS.md, "The agent's spawn"):
 *   0  posix_spawn of /bin/true, as std does it (glibc asks about every signal)
 *   1  vfork + execve alone
 *   2  posix_spawn with every signal in the default set (no questions asked)
 *   3  the signal loop alone, in this process: ask about all 64 signals and
 *      reset the handled ones, as glibc's child does
 *   4  the loop of mode 2 alone: reset all 64 */
#define _GNU_SOURCE
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <unistd.h>
#include <sys/wait.h>
#include <time.h>
extern char **environ;
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e6+t.tv_nsec/1e3;}
static void h(int s){(void)s;}
int main(int argc,char**argv){
  if(argc<3){fprintf(stderr,"usage: spawn_sig COUNT MODE\n");return 2;}
  int n=atoi(argv[1]); int mode=atoi(argv[2]);
  for(int s=1;s<8;s++) if(s!=SIGKILL&&s!=SIGSTOP) signal(s==6?SIGTERM:s,h);
  char*args[]={"/bin/true",0};
  posix_spawnattr_t all_default; posix_spawnattr_init(&all_default);
  sigset_t all, none; sigfillset(&all); sigemptyset(&none);
  posix_spawnattr_setsigdefault(&all_default,&all); posix_spawnattr_setsigmask(&all_default,&none);
  posix_spawnattr_setflags(&all_default,POSIX_SPAWN_SETSIGDEF|POSIX_SPAWN_SETSIGMASK);
  if(mode>=3){
    struct sigaction sa, dfl; memset(&dfl,0,sizeof dfl); dfl.sa_handler=SIG_DFL;
    double t0=now();
    for(int i=0;i<n;i++) for(int s=1;s<65;s++){
      if(mode==4){ sigaction(s,&dfl,0); continue; }
      sigaction(s,0,&sa);
      if(sa.sa_handler!=SIG_DFL&&sa.sa_handler!=SIG_IGN) sigaction(s,&dfl,0), signal(s,h);
    }
    printf("mode %d: %.1f us per spawn's worth of signal calls\n",mode,(now()-t0)/n);
    return 0;
  }
  double tot=0;
  for(int i=0;i<n;i++){
    double t0=now(); pid_t pid;
    if(mode==0) posix_spawn(&pid,"/bin/true",0,0,args,environ);
    else if(mode==2) posix_spawn(&pid,"/bin/true",0,&all_default,args,environ);
    else { pid=vfork(); if(pid==0){ execve("/bin/true",args,environ); _exit(127);} }
    tot+=now()-t0;
    waitpid(pid,0,0);
  }
  printf("mode %d: %.1f us per spawn call\n", mode, tot/n);
}
