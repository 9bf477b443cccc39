#!/usr/bin/perl
# An AMI tool built on Telephony::Asterisk::AMI (Debian's
# libtelephony-asterisk-ami-perl), logged in to the callhook AMI proxy.
# Driven by tests/e2e_ami_proxy.rs: prints one JSON object per line and
# obeys the commands read on stdin (list, quit). The module is synchronous:
# events that arrived meanwhile are printed while it waits for a response.
use strict;
use warnings;
use JSON::PP;
use Telephony::Asterisk::AMI;

$| = 1;
my $json = JSON::PP->new->canonical;
sub out { print $json->encode($_[0]), "\n" }

my $ami = Telephony::Asterisk::AMI->new(
    Host => '127.0.0.1',
    Port => $ENV{PX_PORT},
    Username => $ENV{PX_USER},
    Secret => $ENV{PX_SECRET},
    Event_Callback => sub { out({ event => $_[0] }) },
);
unless ($ami->connect) {
    out({ ready => JSON::PP::false, error => $ami->error });
    exit 1;
}
out({ ready => JSON::PP::true });

while (my $line = <STDIN>) {
    chomp $line;
    if ($line eq 'list') {
        my $resp = $ami->action(Action => 'CoreShowChannels');
        my @items = ($resp);
        while ($resp->{Response} && $resp->{Response} eq 'Success') {
            my $m = $ami->read_response;
            if (!defined $m->{ActionID} || $m->{ActionID} ne $resp->{ActionID}) {
                out({ event => $m });
                next;
            }
            push @items, $m;
            last if ($m->{Event} // '') =~ /Complete$/;
        }
        out({ list => \@items });
    } elsif ($line eq 'forbidden') {
        out({ refused => $ami->action(Action => 'Originate', Channel => 'PJSIP/1001',
            Context => 'from-trunk', Exten => '5551234', Priority => 1) });
    } else {
        my $ok = $ami->disconnect;
        out({ bye => $ok ? 'Goodbye' : $ami->error });
        last;
    }
}
