package proxy

import "testing"

func TestClassifyClient(t *testing.T) {
	for _, tc := range []struct {
		desc                           string
		typ                            byte
		inGroup, inCopy, amongCopyData bool
		want                           clientStep
		wantGroup                      bool
	}{
		{desc: "a Query starts a unit", typ: 'Q', want: stepUnit},
		{desc: "a FunctionCall starts a unit", typ: 'F', want: stepUnit},
		{desc: "a Parse starts a group", typ: 'P', want: stepUnit, wantGroup: true},
		{desc: "a Bind inside a group", typ: 'B', inGroup: true, want: stepRelay, wantGroup: true},
		{desc: "an Execute starts a group", typ: 'E', want: stepUnit, wantGroup: true},
		{desc: "a Describe inside a group", typ: 'D', inGroup: true, want: stepRelay, wantGroup: true},
		{desc: "a Close starts a group", typ: 'C', want: stepUnit, wantGroup: true},
		{desc: "Sync ends a group", typ: 'S', inGroup: true, want: stepRelay},
		{desc: "a Sync alone is a unit", typ: 'S', want: stepLoneSync},
		{desc: "a Query inside a group ends it, in its unit", typ: 'Q', inGroup: true, want: stepRelay},
		{desc: "a FunctionCall inside a group ends it", typ: 'F', inGroup: true, want: stepRelay},
		{desc: "Flush changes nothing", typ: 'H', inGroup: true, want: stepRelay, wantGroup: true},
		{desc: "copy data between transactions", typ: 'd', want: stepRelay},
		{desc: "CopyDone inside a group", typ: 'c', inGroup: true, want: stepRelay, wantGroup: true},
		{desc: "CopyFail", typ: 'f', inCopy: true, want: stepRelay},
		{desc: "copy data during COPY", typ: 'd', inCopy: true, want: stepRelay},
		{desc: "a Sync among copy data is not sent", typ: 'S', inCopy: true, amongCopyData: true, want: stepDrop},
		{desc: "a Sync among copy data in a group keeps the group", typ: 'S', inGroup: true, inCopy: true, amongCopyData: true, want: stepDrop, wantGroup: true},
		{desc: "a Sync right behind the COPY command is relayed", typ: 'S', inCopy: true, want: stepLoneSync},
		{desc: "a Query during COPY goes in as it is", typ: 'Q', inCopy: true, want: stepIntoCopy},
		{desc: "a Parse during COPY goes in as it is", typ: 'P', inGroup: true, inCopy: true, want: stepIntoCopy, wantGroup: true},
		{desc: "Terminate", typ: 'X', want: stepTerminate},
		{desc: "Terminate during COPY", typ: 'X', inCopy: true, want: stepTerminate},
	} {
		t.Run(tc.desc, func(t *testing.T) {
			got, group := classifyClient(tc.typ, tc.inGroup, tc.inCopy, tc.amongCopyData)
			if got != tc.want || group != tc.wantGroup {
				t.Fatalf("classifyClient(%q, group %v, copy %v, among data %v) = %v, group %v; want %v, group %v",
					tc.typ, tc.inGroup, tc.inCopy, tc.amongCopyData, got, group, tc.want, tc.wantGroup)
			}
		})
	}
}
